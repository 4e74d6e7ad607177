/// The limits every writer of users checks. One place, so the API, the pages and the
/// stores agree.
public enum Limits {
    public static let emailMax = 254
    /// Counted in Unicode code points, as JSON Schema's minLength and maxLength are (the
    /// OpenAPI document states the same limits). bcrypt reads 72 bytes at most, so a longer
    /// password is reduced to its SHA-256 first (`UserService.bcryptInput`).
    public static let passwordMin = 8
    public static let passwordMax = 256
    public static let nameMax = 100
    public static let streetMax = 200
    public static let cityMax = 100
    public static let stateMax = 50
    public static let postalCodeMax = 20
    public static let phoneNumbersMax = 5
    public static let phoneNumberMax = 32
}

/// Field validation, returning every problem at once.
public enum Validate {
    /// A practical address grammar, the one the OpenAPI document's pattern states: a local
    /// part of letters, digits, `!#$%&'*+/=?^_`{|}~-` and dots; a host name of two or more
    /// dot-separated labels of letters, digits and hyphens.
    public static func email(_ email: String, into errors: inout [FieldError]) {
        let parts = email.split(separator: "@", omittingEmptySubsequences: false)
        let labels = parts.count == 2 ? parts[1].split(separator: ".", omittingEmptySubsequences: false) : []
        let ok =
            email.utf8.count <= Limits.emailMax && parts.count == 2 && !parts[0].isEmpty
            && parts[0].unicodeScalars.allSatisfy { isAlphanumericASCII($0) || localSymbols.contains($0) }
            && labels.count >= 2
            && labels.allSatisfy { !$0.isEmpty && $0.unicodeScalars.allSatisfy { isAlphanumericASCII($0) || $0 == "-" } }
        if !ok { errors.append(FieldError("email", "must be an email address of at most \(Limits.emailMax) characters")) }
    }

    static let localSymbols = Set("!#$%&'*+/=?^_`{|}~.-".unicodeScalars)

    static func isAlphanumericASCII(_ s: Unicode.Scalar) -> Bool {
        ("a"..."z").contains(s) || ("A"..."Z").contains(s) || ("0"..."9").contains(s)
    }

    public static func password(_ password: String, into errors: inout [FieldError]) {
        let count = password.unicodeScalars.count
        if count < Limits.passwordMin || count > Limits.passwordMax {
            errors.append(FieldError("password", "must be \(Limits.passwordMin) to \(Limits.passwordMax) characters"))
        } else if password.utf8.contains(0) {
            // bcrypt stops at a NUL: "\0zzzzzzz" would be the empty password.
            errors.append(FieldError("password", "must not contain NUL"))
        }
    }

    public static func profile(_ p: Profile, into errors: inout [FieldError]) {
        text(p.firstName, "firstName", min: 1, max: Limits.nameMax, into: &errors)
        text(p.lastName, "lastName", min: 1, max: Limits.nameMax, into: &errors)
        text(p.address.streetAddress, "address.streetAddress", min: 0, max: Limits.streetMax, into: &errors)
        text(p.address.city, "address.city", min: 0, max: Limits.cityMax, into: &errors)
        text(p.address.state, "address.state", min: 0, max: Limits.stateMax, into: &errors)
        text(p.address.postalCode, "address.postalCode", min: 0, max: Limits.postalCodeMax, into: &errors)
        if p.phoneNumbers.count > Limits.phoneNumbersMax {
            errors.append(FieldError("phoneNumbers", "at most \(Limits.phoneNumbersMax) phone numbers"))
        }
        for (i, number) in p.phoneNumbers.enumerated() {
            let allowed = number.allSatisfy { $0.isASCII && ($0.isNumber || " +-().".contains($0)) }
            let digits = number.filter(\.isNumber).count
            if !allowed || digits < 3 || number.count > Limits.phoneNumberMax {
                errors.append(
                    FieldError(
                        "phoneNumbers[\(i)]",
                        "must be digits with optional spaces, +, -, ( ) or dots, at most \(Limits.phoneNumberMax) characters"
                    ))
            }
        }
    }

    /// Length within bounds, counted in code points as JSON Schema counts (so a character
    /// carrying thousands of combining marks counts each, and the bytes are at most 4 a
    /// code point), and no control, bidi override or invisible characters.
    static func text(_ value: String, _ field: String, min: Int, max: Int, into errors: inout [FieldError]) {
        let count = value.unicodeScalars.count
        if count < min || count > max {
            errors.append(FieldError(field, min > 0 ? "must be \(min) to \(max) characters" : "must be at most \(max) characters"))
        } else if value.unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) {
            errors.append(FieldError(field, "must not contain control characters"))
        } else if value.unicodeScalars.contains(where: { hidden.contains($0.value) }) {
            errors.append(FieldError(field, "must not contain bidirectional controls or invisible characters"))
        } else if min > 0 && value.unicodeScalars.allSatisfy(\.properties.isWhitespace) {
            errors.append(FieldError(field, "must not be blank"))
        }
    }

    /// Bidirectional controls (they can make a name display as something else) and
    /// zero-width characters that only hide text. Joiners (U+200C, U+200D) stay: scripts and
    /// emoji need them.
    static let hidden: Set<UInt32> = Set(
        [0x061C, 0x200B, 0x200E, 0x200F, 0x2060, 0xFEFF] + Array(0x202A...0x202E) + Array(0x2066...0x2069))

    /// Throws a validation error if any field is invalid.
    public static func throwing(_ errors: [FieldError]) throws {
        if !errors.isEmpty {
            throw MillionsError(.validation, "some fields are invalid", fields: errors)
        }
    }

    /// Lower-cases and trims an email so one address has one account.
    public static func normalizedEmail(_ email: String) -> String {
        email.trimmed.lowercased()
    }
}

extension String {
    /// Without leading and trailing whitespace.
    public var trimmed: String {
        var s = self[...]
        while let f = s.first, f.isWhitespace { s.removeFirst() }
        while let l = s.last, l.isWhitespace { s.removeLast() }
        return String(s)
    }
}
