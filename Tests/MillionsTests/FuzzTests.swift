import CacheTier
import Foundation
import HTTPTypes
import HummingbirdTesting
import Imaging
import MillionsTesting
import NIOCore
import RedisClient
import Testing
@testable import WebTier

/// Property tests over random and mutated input for every parser the project owns (the
/// toolchain here has no libFuzzer): each must answer a value, "need more bytes", or its
/// own error, never crash, hang or read past what it was given. Seeded, so a failure
/// names the seed and case that reproduce it.
@Suite struct FuzzTests {
    static let seed: UInt64 = 0x6d69_6c6c_696f_6e73

    /// A small deterministic generator (SplitMix64).
    struct Random {
        var state: UInt64
        mutating func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        mutating func int(_ range: Range<Int>) -> Int { range.lowerBound + Int(next() % UInt64(range.count)) }
        mutating func chance(_ percent: Int) -> Bool { int(0..<100) < percent }
        mutating func pick<T>(_ items: [T]) -> T { items[int(0..<items.count)] }
        mutating func bytes(_ count: Int, from alphabet: [UInt8]) -> [UInt8] { (0..<count).map { _ in pick(alphabet) } }
    }

    /// Flips, inserts, deletes, duplicates and truncates, a few at a time.
    static func mutate(_ input: [UInt8], _ r: inout Random, alphabet: [UInt8]) -> [UInt8] {
        var out = input
        for _ in 0..<r.int(1..<5) {
            switch r.int(0..<6) {
            case 0 where !out.isEmpty: out[r.int(0..<out.count)] = r.pick(alphabet)
            case 1: out.insert(contentsOf: r.bytes(r.int(1..<8), from: alphabet), at: r.int(0..<(out.count + 1)))
            case 2 where !out.isEmpty:
                let at = r.int(0..<out.count)
                out.removeSubrange(at..<min(out.count, at + r.int(1..<8)))
            case 3 where !out.isEmpty:
                let at = r.int(0..<out.count)
                out.insert(contentsOf: out[at..<min(out.count, at + r.int(1..<32))], at: r.int(0..<(out.count + 1)))
            case 4 where !out.isEmpty: out = Array(out.prefix(r.int(0..<out.count)))
            default: out.insert(r.pick(alphabet), at: 0)
            }
        }
        return out
    }

    // MARK: RESP

    static let respAlphabet = Array("*$+-:_,#!=%~>|(\r\n0123456789-abcOK. ".utf8) + [0, 255]

    /// A valid RESP2/RESP3 value's bytes.
    static func resp(_ r: inout Random, depth: Int = 0) -> [UInt8] {
        func line(_ s: String) -> [UInt8] { Array((s + "\r\n").utf8) }
        let text = String(decoding: r.bytes(r.int(0..<12), from: Array("abcdefgh XYZ".utf8)), as: UTF8.self)
        switch r.int(0..<(depth < 3 ? 13 : 9)) {
        case 0: return line("+" + text)
        case 1: return line("-ERR " + text)
        case 2: return line(":\(r.int(-1000..<1000))")
        case 3: return line("$\(text.utf8.count)") + line(text)
        case 4: return line("_")
        case 5: return line(r.chance(50) ? "#t" : "#f")
        case 6: return line(",\(Double(r.int(-100..<100)) / 8)")
        case 7: return line("(1234567890123456789012345")
        case 8: return line("=\(text.utf8.count + 4)") + line("txt:" + text)
        case 9, 10:
            let n = r.int(0..<4)
            return line((r.chance(50) ? "*" : r.pick(["~", ">"])) + "\(n)") + (0..<n).flatMap { _ in resp(&r, depth: depth + 1) }
        case 11:
            let n = r.int(0..<3)
            return line("%\(n)") + (0..<(2 * n)).flatMap { _ in resp(&r, depth: depth + 1) }
        default:
            // An attribute, then the value it annotates.
            return line("|1") + resp(&r, depth: depth + 1) + resp(&r, depth: depth + 1) + resp(&r, depth: depth + 1)
        }
    }

    /// Parses values from `bytes` until it needs more or throws; checks that it only
    /// consumes what it returns.
    static func drainRESP(_ bytes: [UInt8], limits: RESPLimits) -> (values: Int, error: Bool) {
        var buffer = ByteBuffer(bytes: bytes)
        var values = 0
        while true {
            let before = buffer.readerIndex
            do {
                guard try RESPParser.parse(&buffer, limits: limits) != nil else {
                    #expect(buffer.readerIndex == before)
                    return (values, false)
                }
                #expect(buffer.readerIndex > before)
                values += 1
            } catch {
                return (values, true)
            }
        }
    }

    @Test func respParserSurvivesRandomAndMutatedReplies() {
        var r = Random(state: Self.seed)
        var limits = RESPLimits()
        limits.maxBulkBytes = 1 << 16
        limits.maxElements = 1 << 12
        limits.maxDepth = 8
        var parsed = 0
        for i in 0..<6000 {
            let valid = Self.resp(&r)
            if i % 3 == 0 {
                // Whole: one value. Any strict prefix: "need more", nothing consumed.
                #expect(Self.drainRESP(valid, limits: limits) == (1, false), "seed \(Self.seed) case \(i)")
                let cut = r.int(0..<valid.count)
                #expect(Self.drainRESP(Array(valid.prefix(cut)), limits: limits) == (0, false), "seed \(Self.seed) case \(i)")
            }
            let input = i % 3 == 1 ? Self.mutate(valid, &r, alphabet: Self.respAlphabet) : r.bytes(r.int(0..<64), from: Self.respAlphabet)
            parsed += Self.drainRESP(input, limits: limits).values
        }
        #expect(parsed > 0)
        // Counts that would overflow or allocate without end are refused, not trusted.
        for hostile in ["*9223372036854775807\r\n", "%4611686018427387904\r\n", "$99999999999\r\n", "*-5\r\n", "$-7\r\n"] {
            #expect(Self.drainRESP(Array(hostile.utf8), limits: limits).values == 0)
        }
    }

    // MARK: memcached meta responses

    static let memcachedAlphabet = Array("VAHDENSXFMOKROTS 0123456789kfcst\r\n".utf8) + [0, 200]

    static func memcachedResponse(_ r: inout Random) -> [UInt8] {
        switch r.int(0..<8) {
        case 0:
            let value = r.bytes(r.int(0..<40), from: Array("abc\r\n0".utf8))
            return Array("VA \(value.count) f\(r.int(0..<9)) t\(r.int(-1..<99))\r\n".utf8) + value + [13, 10]
        case 1: return Array("HD c\(r.int(0..<999))\r\n".utf8)
        case 2: return Array("EN\r\n".utf8)
        case 3: return Array("NS\r\n".utf8)
        case 4: return Array("EX\r\n".utf8)
        case 5: return Array("NF\r\n".utf8)
        case 6: return Array("STAT curr_items \(r.int(0..<99))\r\nSTAT version 1.6\r\nEND\r\n".utf8)
        default: return Array("SERVER_ERROR out of memory\r\n".utf8)
        }
    }

    @Test func memcachedDecoderSurvivesRandomAndMutatedResponses() {
        var r = Random(state: Self.seed &+ 1)
        var decoded = 0
        for i in 0..<6000 {
            let valid = Self.memcachedResponse(&r)
            let input: [UInt8]
            switch i % 3 {
            case 0:
                var decoder = MemcachedResponseDecoder()
                var whole = ByteBuffer(bytes: valid)
                #expect((try? decoder.decodeOne(&whole)) != nil, "seed \(Self.seed) case \(i)")
                var prefix = ByteBuffer(bytes: Array(valid.prefix(r.int(0..<valid.count))))
                let before = prefix.readableBytes
                var fresh = MemcachedResponseDecoder()
                let partial = try? fresh.decodeOne(&prefix)
                // A prefix either needs more bytes or is a whole shorter response
                // (the STAT lines are consumed as they come).
                #expect(partial == nil || prefix.readableBytes < before)
                input = valid
            case 1: input = Self.mutate(valid, &r, alphabet: Self.memcachedAlphabet)
            default: input = r.bytes(r.int(0..<64), from: Self.memcachedAlphabet)
            }
            var decoder = MemcachedResponseDecoder()
            var buffer = ByteBuffer(bytes: input)
            while let response = try? decoder.decodeOne(&buffer) {
                decoded += 1
                if case .value = response.status { #expect(response.value.map { $0.count <= MemcachedResponseDecoder.maxValueBytes } ?? true) }
            }
        }
        #expect(decoded > 0)
        // A flood of STAT lines is refused, not collected without end.
        var decoder = MemcachedResponseDecoder()
        var flood = ByteBuffer(string: (0..<20_000).map { "STAT k\($0) v\r\n" }.joined())
        #expect(throws: MemcachedError.self) { _ = try decoder.decodeOne(&flood) }
    }

    // MARK: multipart forms

    @Test func multipartParserSurvivesMutatedForms() throws {
        var r = Random(state: Self.seed &+ 2)
        let boundary = "----millionsBoundary7MA4YWxk"
        let alphabet = Array("-\r\n\"=;: abcdefghContent-Disposition form-data name filename".utf8) + [0, 255]
        var parsed = 0
        for i in 0..<3000 {
            var body: [UInt8] = []
            for p in 0..<r.int(0..<4) {
                body += Array("--\(boundary)\r\nContent-Disposition: form-data; name=\"f\(p)\"\(r.chance(30) ? "; filename=\"x.png\"" : "")\r\n\r\n".utf8)
                body += r.bytes(r.int(0..<60), from: alphabet) + Array("\r\n".utf8)
            }
            body += Array("--\(boundary)--\r\n".utf8)
            let input = i % 2 == 0 ? body : Self.mutate(body, &r, alphabet: alphabet)
            if let form = try? MultipartForm(input, boundary: boundary) {
                parsed += 1
                // Every part is a piece of the body, never more.
                #expect(form.parts.allSatisfy { $0.body.count <= input.count }, "seed \(Self.seed) case \(i)")
            }
        }
        #expect(parsed > 0)
        #expect(MultipartForm.boundary(contentType: "multipart/form-data; boundary=\(String(repeating: "x", count: 500))") == nil)
    }

    // MARK: image type and header

    @Test func imageSniffingAndHeaderChecksSurviveMutatedImages() throws {
        var r = Random(state: Self.seed &+ 3)
        let samples = try ImageFormat.allCases.map { try Imaging.testImage(width: 64, height: 48, format: $0) }
        let alphabet = (0...255).map { UInt8($0) }
        var refused = 0
        for i in 0..<3000 {
            let sample = samples[i % samples.count]
            // Mutate the header, where the type and size are read.
            let head = Array(sample.prefix(128))
            let input = Self.mutate(head, &r, alphabet: alphabet) + sample.dropFirst(128)
            _ = ImageFormat.detect(input)
            do {
                let info = try Imaging.probe(input, limits: ImageLimits())
                #expect(info.width > 0 && info.height > 0 && info.width * info.height <= ImageLimits().maxPixels)
            } catch is ImageError {
                refused += 1
            }
        }
        #expect(refused > 0)
        for _ in 0..<2000 { _ = ImageFormat.detect(r.bytes(r.int(0..<32), from: alphabet)) }
    }

    // MARK: JSON bodies and cookies, through the web tier

    /// Mutated JSON bodies to every JSON route, and mutated cookies: every answer is a 2xx
    /// or a 4xx with the JSON error shape, never a 5xx.
    @Test func jsonBodiesAndCookiesNeverCauseAServerError() async throws {
        // Limits wide open: the point is the parsers behind them.
        let open = ["limits.logInPerAddress", "limits.logInPerAccount", "limits.signUpPerAddress", "limits.editsPerAccount"]
        try await TestApp.run(Dictionary(uniqueKeysWithValues: open.map { ($0, "1000000/1") })) { client, _ in
            var r = Random(state: Self.seed &+ 4)
            let (id, session) = try await signUpJohn(client)
            let alphabet = Array(#"{}[]",:0123456789.-eE+truefalsnul\"\\u00 abcXYZ"#.utf8) + [0, 0xC3, 0xA9, 0xF0, 0x9F, 0x98, 0x80, 0xFF]
            let samples: [(HTTPRequest.Method, String, String)] = [
                (.post, "/users", john.replacingOccurrences(of: "john@", with: "fuzz@")),
                (.patch, "/users/\(id)", #"{"firstName":"Jo","address":{"city":"Oslo","postalCode":"0150"},"phoneNumbers":["1"]}"#),
                (.post, "/sessions", #"{"email":"john@example.com","password":"correct horse"}"#),
                (.post, "/users/\(id)/photo/edits", #"{"crop":{"x":0,"y":0,"width":10,"height":10},"blur":{"sigma":1}}"#),
            ]
            var statuses: [Int: Int] = [:]
            for i in 0..<1600 {
                let (method, path, json) = samples[i % samples.count]
                let body = Self.mutate(Array(json.utf8), &r, alphabet: alphabet)
                let answer = try await client.execute(
                    uri: path, method: method,
                    headers: [.contentType: "application/json", .cookie: "millions_session=\(session)"],
                    body: ByteBuffer(bytes: body))
                statuses[Int(answer.status.code), default: 0] += 1
                #expect(answer.status.code < 500, "seed \(Self.seed) case \(i): \(method) \(path) \(String(decoding: body, as: UTF8.self)) → \(answer.status)")
                if answer.status.code >= 400 { #expect(answer.errorCode != nil) }
            }
            #expect(statuses.keys.contains { $0 < 300 } && statuses.keys.contains { $0 >= 400 })
            let cookieAlphabet = Array("millions_session=;, \"abcdef0123456789%=".utf8) + [0x7F, 0xC3, 0xA9]
            for i in 0..<1000 {
                let cookie = String(decoding: Self.mutate(Array("millions_session=\(session); millions_lsn=0:16/0".utf8), &r, alphabet: cookieAlphabet), as: UTF8.self)
                guard HTTPField.isValidValue(cookie) else { continue }
                let answer = try await client.execute(uri: "/me", method: .get, headers: [.cookie: cookie])
                #expect([200, 401].contains(answer.status.code), "seed \(Self.seed) case \(i): \(cookie) → \(answer.status)")
            }
        }
    }
}
