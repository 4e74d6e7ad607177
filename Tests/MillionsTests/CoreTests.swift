import Foundation
import MillionsCore
import Testing

@Suite struct UserIDTests {
    @Test func layoutCarriesTheLogicalShard() throws {
        let id = UserID(seconds: UserID.epoch + 1000, shard: 777, sequence: 42)
        #expect(id.logicalShard == 777)
        #expect(id.createdAtSeconds == UserID.epoch + 1000)
        #expect(id.rawValue & 0xfff == 42)
        #expect(id.rawValue <= UserID.maxRawValue)
    }

    @Test func idsStayExactInJavaScriptUntil2094() {
        let last = UserID(seconds: UserID.epoch + (1 << 31) - 1, shard: 1023, sequence: 4095)
        #expect(last.rawValue == UserID.maxRawValue)
        #expect(Double(last.rawValue) == Double(UserID.maxRawValue))
    }

    @Test func parsing() {
        #expect(UserID("12")?.rawValue == 12)
        #expect(UserID("0") == nil)
        #expect(UserID("-1") == nil)
        #expect(UserID("abc") == nil)
        #expect(UserID("9007199254740992") == nil)  // 2^53
        #expect(UserID("99999999999999999999") == nil)
        #expect(UserID("١٢") == nil)  // non-ASCII digits
        #expect(UserID("") == nil)
    }

    @Test func generatorMakesDistinctIDsSpreadOverShards() {
        let gen = UserIDGenerator()
        let ids = (0..<2000).map { _ in gen.next() }
        #expect(Set(ids).count == ids.count)
        #expect(Set(ids.map(\.logicalShard)).count > 500)
    }
}

@Suite struct SHA256Tests {
    @Test func knownVectors() {
        #expect(SHA256.hex("") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        #expect(SHA256.hex("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        #expect(
            SHA256.hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq")
                == "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
        #expect(
            SHA256.hex(Array(repeating: UInt8(ascii: "a"), count: 1_000_000))
                == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0")
    }
}

@Suite struct ValidationTests {
    @Test func emails() {
        func ok(_ e: String) -> Bool {
            var errors: [FieldError] = []
            Validate.email(e, into: &errors)
            return errors.isEmpty
        }
        #expect(ok("john@example.com"))
        #expect(!ok("john"))
        #expect(!ok("john@localhost"))
        #expect(!ok("jo hn@example.com"))
        #expect(!ok("a@b@example.com"))
        #expect(!ok(String(repeating: "a", count: 250) + "@example.com"))
        #expect(Validate.normalizedEmail("  John@Example.COM ") == "john@example.com")
    }

    @Test func profileLimits() {
        var errors: [FieldError] = []
        Validate.profile(
            Profile(
                firstName: "", lastName: String(repeating: "x", count: 101),
                address: Address(postalCode: String(repeating: "1", count: 21)),
                phoneNumbers: ["1", "2", "3", "4", "5", "6"]), into: &errors)
        let fields = Set(errors.map(\.field))
        #expect(fields.isSuperset(of: ["firstName", "lastName", "address.postalCode", "phoneNumbers", "phoneNumbers[0]"]))
    }

    @Test func passwordsAreBoundedInCodePoints() {
        var errors: [FieldError] = []
        Validate.password(String(repeating: "é", count: 40), into: &errors)  // 80 bytes: bcryptInput hashes it
        #expect(errors.isEmpty)
        Validate.password(String(repeating: "x", count: 257), into: &errors)
        #expect(errors.map(\.field) == ["password"])
        errors = []
        Validate.password("e\u{301}e\u{301}e\u{301}e\u{301}", into: &errors)  // 4 characters, 8 code points (JSON Schema's count)
        #expect(errors.isEmpty)
        errors = []
        Validate.password("\u{0}zzzzzzz", into: &errors)  // bcrypt would see ""
        #expect(errors.map(\.message) == ["must not contain NUL"])
    }

    /// Names limited in bytes too (one character can carry thousands of combining marks),
    /// and no bidi overrides or invisible characters; joiners, as in emoji, stay.
    @Test func namesAreBoundedInBytesAndRefuseHiddenCharacters() {
        func errors(_ name: String) -> [String] {
            var e: [FieldError] = []
            Validate.profile(Profile(firstName: name, lastName: "B"), into: &e)
            return e.map(\.field)
        }
        #expect(errors("a" + String(repeating: "\u{301}", count: 25_000)) == ["firstName"])
        #expect(errors("evil\u{202E}gnp.exe") == ["firstName"])
        #expect(errors("ad\u{200B}min") == ["firstName"])
        #expect(errors("\u{2067}x") == ["firstName"])
        #expect(errors("Zoë 👩‍👩‍👧") == [])
        #expect(errors("می\u{200C}خواهم") == [])
        #expect(errors(String(repeating: "é", count: 100)) == [])
    }
}

@Suite struct JSONWriterTests {
    @Test func userIsTheChaptersObjectInOrder() throws {
        let user = User(
            id: UserID(rawValue: 12)!, firstName: "John", lastName: "Smith",
            address: Address(streetAddress: "21 2nd Street", city: "New York", state: "NY", postalCode: "10021"),
            phoneNumbers: ["212 555-1234", "646 555-4567"])
        #expect(
            String(decoding: user.json, as: UTF8.self)
                == #"{"id":12,"firstName":"John","lastName":"Smith","address":{"streetAddress":"21 2nd Street","city":"New York","state":"NY","postalCode":"10021"},"phoneNumbers":["212 555-1234","646 555-4567"]}"#
        )
        #expect(try JSONDecoder().decode(User.self, from: Data(user.json)) == user)
    }

    @Test func escapes() throws {
        var w = JSONWriter()
        w.beginArray()
        w.string("a\"b\\c\n\u{01}é")
        w.endArray()
        let decoded = try JSONDecoder().decode([String].self, from: Data(w.bytes))
        #expect(decoded == ["a\"b\\c\n\u{01}é"])
    }
}

@Suite struct LoginThrottleTests {
    @Test func doublesAfterFreeAttemptsAndCaps() {
        let t = LoginThrottle(freeAttempts: 3, baseLockSeconds: 1, maxLockSeconds: 10)
        #expect(t.lockSeconds(afterFailures: 2) == nil)
        #expect(t.lockSeconds(afterFailures: 3) == 1)
        #expect(t.lockSeconds(afterFailures: 4) == 2)
        #expect(t.lockSeconds(afterFailures: 6) == 8)
        #expect(t.lockSeconds(afterFailures: 7) == 10)
        #expect(t.lockSeconds(afterFailures: 500) == 10)
    }

    @Test func anAttemptCountsLocksAndForgets() throws {
        let t = LoginThrottle(freeAttempts: 2, baseLockSeconds: 1, maxLockSeconds: 10, forgetAfterSeconds: 100)
        #expect(try t.attempt(failures: 0, lockedUntil: nil, lastFailureAt: 0, now: 50).get() == (1, nil))
        #expect(try t.attempt(failures: 1, lockedUntil: nil, lastFailureAt: 50, now: 60).get() == (2, 61))
        #expect(throws: LoginThrottle.Locked(until: 61)) { try t.attempt(failures: 2, lockedUntil: 61, lastFailureAt: 60, now: 60.5).get() }
        #expect(try t.attempt(failures: 2, lockedUntil: 61, lastFailureAt: 60, now: 61).get() == (3, 63))
        // A hundred seconds after the last failure it no longer counts.
        #expect(try t.attempt(failures: 9, lockedUntil: 70, lastFailureAt: 60, now: 160).get() == (1, nil))
    }
}
