/// A postal address, shaped exactly as in the chapter's user object.
///
/// `postalCode` is a string, not a number: postal codes have leading zeros
/// ("02134") and letters ("SW1A 1AA") in many countries.
public struct Address: Codable, Sendable, Equatable, Hashable {
    public var streetAddress: String
    public var city: String
    public var state: String
    public var postalCode: String

    public init(streetAddress: String = "", city: String = "", state: String = "", postalCode: String = "") {
        self.streetAddress = streetAddress
        self.city = city
        self.state = state
        self.postalCode = postalCode
    }
}

/// The chapter's user object; its JSON encoding is the public shape of `GET /users/{id}`.
public struct User: Codable, Sendable, Equatable, Hashable {
    public var id: UserID
    public var firstName: String
    public var lastName: String
    public var address: Address
    public var phoneNumbers: [String]
    /// The current profile photo's variants, once one has been processed.
    public var photo: Photo?

    public init(
        id: UserID, firstName: String, lastName: String, address: Address, phoneNumbers: [String], photo: Photo? = nil
    ) {
        self.id = id
        self.firstName = firstName
        self.lastName = lastName
        self.address = address
        self.phoneNumbers = phoneNumbers
        self.photo = photo
    }

    public init(id: UserID, profile p: Profile, photo: Photo? = nil) {
        self.init(
            id: id, firstName: p.firstName, lastName: p.lastName, address: p.address, phoneNumbers: p.phoneNumbers,
            photo: photo)
    }

    /// The editable part of the user.
    public var profile: Profile {
        Profile(firstName: firstName, lastName: lastName, address: address, phoneNumbers: phoneNumbers)
    }
}

/// Everything a user may edit about themselves.
public struct Profile: Sendable, Equatable, Hashable {
    public var firstName: String
    public var lastName: String
    public var address: Address
    public var phoneNumbers: [String]

    public init(firstName: String, lastName: String, address: Address = Address(), phoneNumbers: [String] = []) {
        self.firstName = firstName
        self.lastName = lastName
        self.address = address
        self.phoneNumbers = phoneNumbers
    }
}

/// A partial profile update: `nil` leaves a field as it is.
public struct ProfilePatch: Sendable, Equatable {
    public var firstName: String?
    public var lastName: String?
    public var streetAddress: String?
    public var city: String?
    public var state: String?
    public var postalCode: String?
    public var phoneNumbers: [String]?

    public init(
        firstName: String? = nil, lastName: String? = nil, streetAddress: String? = nil, city: String? = nil,
        state: String? = nil, postalCode: String? = nil, phoneNumbers: [String]? = nil
    ) {
        self.firstName = firstName
        self.lastName = lastName
        self.streetAddress = streetAddress
        self.city = city
        self.state = state
        self.postalCode = postalCode
        self.phoneNumbers = phoneNumbers
    }

    public var isEmpty: Bool {
        firstName == nil && lastName == nil && streetAddress == nil && city == nil && state == nil
            && postalCode == nil && phoneNumbers == nil
    }

    /// The profile after this patch.
    public func applied(to profile: Profile) -> Profile {
        var p = profile
        if let firstName { p.firstName = firstName }
        if let lastName { p.lastName = lastName }
        if let streetAddress { p.address.streetAddress = streetAddress }
        if let city { p.address.city = city }
        if let state { p.address.state = state }
        if let postalCode { p.address.postalCode = postalCode }
        if let phoneNumbers { p.phoneNumbers = phoneNumbers }
        return p
    }
}

/// What sign-up stores: the login identity plus the first profile.
public struct NewAccount: Sendable {
    public var id: UserID
    public var email: String
    public var passwordHash: String
    public var profile: Profile

    public init(id: UserID, email: String, passwordHash: String, profile: Profile) {
        self.id = id
        self.email = email
        self.passwordHash = passwordHash
        self.profile = profile
    }
}

/// The login identity of a user, as the log-in path needs it.
public struct Credentials: Sendable {
    public var userID: UserID
    public var email: String
    public var passwordHash: String

    public init(userID: UserID, email: String, passwordHash: String) {
        self.userID = userID
        self.email = email
        self.passwordHash = passwordHash
    }
}

/// A user's current profile photo: variant name → its immutable URL path
/// (`/photos/<sha256>.jpg`). Encoded as a plain JSON object.
public struct Photo: Codable, Sendable, Equatable, Hashable {
    public var variants: [String: String]

    public init(variants: [String: String]) { self.variants = variants }

    public init(from decoder: any Decoder) throws {
        variants = try decoder.singleValueContainer().decode([String: String].self)
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(variants)
    }

    /// The JSON text stored in the database and shown in the user object.
    public var jsonText: String {
        var w = JSONWriter()
        write(into: &w)
        return String(decoding: w.bytes, as: UTF8.self)
    }

    func write(into w: inout JSONWriter) {
        w.beginObject()
        for name in variants.keys.sorted() { w.field(name, variants[name]!) }
        w.endObject()
    }
}
