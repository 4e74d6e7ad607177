import MillionsCore

/// `POST /users`. Every field optional here so that a missing one is a 422 naming it,
/// not a decoding failure.
struct SignUpRequest: StrictJSON {
    var email: String?
    var password: String?
    var firstName: String?
    var lastName: String?
    var address: AddressInput?
    var phoneNumbers: [String]?

    static let allowedKeys: [String: Set<String>] = [
        "": ["email", "password", "firstName", "lastName", "address", "phoneNumbers"],
        "address": AddressInput.keys,
    ]

    /// The validated account data, or a 422 listing every problem.
    func validated() throws -> (email: String, password: String, profile: Profile) {
        var errors: [FieldError] = []
        let email = Validate.normalizedEmail(self.email ?? "")
        if let raw = self.email {
            // The limit holds before trimming too, as the document's maxLength does.
            Validate.email(raw.unicodeScalars.count > Limits.emailMax ? raw : email, into: &errors)
        } else {
            errors.append(FieldError("email", "is required"))
        }
        if let password { Validate.password(password, into: &errors) } else {
            errors.append(FieldError("password", "is required"))
        }
        if firstName == nil { errors.append(FieldError("firstName", "is required")) }
        if lastName == nil { errors.append(FieldError("lastName", "is required")) }
        let profile = Profile(
            firstName: firstName ?? "x", lastName: lastName ?? "x",
            address: Address(
                streetAddress: address?.streetAddress ?? "", city: address?.city ?? "", state: address?.state ?? "",
                postalCode: address?.postalCode ?? ""),
            phoneNumbers: phoneNumbers ?? [])
        Validate.profile(profile, into: &errors)
        try Validate.throwing(errors)
        return (email, password!, profile)
    }
}

struct AddressInput: Decodable {
    var streetAddress: String?
    var city: String?
    var state: String?
    var postalCode: String?
    static let keys: Set<String> = ["streetAddress", "city", "state", "postalCode"]
}

/// `PATCH /users/{id}`: any subset of the profile; address fields merge one by one.
struct ProfilePatchRequest: StrictJSON {
    var firstName: String?
    var lastName: String?
    var address: AddressInput?
    var phoneNumbers: [String]?

    static let allowedKeys: [String: Set<String>] = [
        "": ["firstName", "lastName", "address", "phoneNumbers"],
        "address": AddressInput.keys,
    ]

    var patch: ProfilePatch {
        ProfilePatch(
            firstName: firstName, lastName: lastName, streetAddress: address?.streetAddress, city: address?.city,
            state: address?.state, postalCode: address?.postalCode, phoneNumbers: phoneNumbers)
    }
}

/// `POST /sessions`.
struct LogInRequest: StrictJSON {
    var email: String?
    var password: String?
    static let allowedKeys: [String: Set<String>] = ["": ["email", "password"]]
}
