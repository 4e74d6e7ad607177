import Foundation
import Logging
import Testing

@testable import Observability
@testable import WebTier

@Suite struct LogFormatTests {
    /// Whatever a value holds, the line stays one JSON object that reads back the same.
    @Test func stringsAreEscapedAndReadBackUnchanged() throws {
        let hostile = "a\"b\\c\nd\r\te\u{01}\u{1F}é😀</script>"
        var line: [UInt8] = []
        line.append(contentsOf: "{\"k\":".utf8)
        JSON.appendString(hostile, to: &line)
        line.append(contentsOf: ",\"n\":".utf8)
        JSON.append(.stringConvertible(42), to: &line)
        line.append(contentsOf: ",\"d\":".utf8)
        JSON.append(.stringConvertible(1.5), to: &line)
        line.append(contentsOf: ",\"a\":".utf8)
        JSON.append(.array([.string("x"), .dictionary(["z": .string("\"")])]), to: &line)
        line.append(UInt8(ascii: "}"))
        #expect(!line.contains(UInt8(ascii: "\n")))
        let object = try #require(try JSONSerialization.jsonObject(with: Data(line)) as? [String: Any])
        #expect(object["k"] as? String == hostile)
        #expect(object["n"] as? Int == 42)
        #expect(object["d"] as? Double == 1.5)
    }

    /// The access line written directly is the line `info("request", metadata:)` writes.
    @Test func theDirectAccessLineIsTheLoggedLine() {
        let handler = JSONLogHandler(label: "millions")
        let fields: (String, String, String, Int, Double, String, String) = (
            "GET", "/users/7\"\n", "/users/{id}", 200, 0.125, "abc-1", "10.0.0.9"
        )
        let direct = handler.requestLine(
            method: fields.0, path: fields.1, route: fields.2, status: fields.3, durationMS: fields.4, requestID: fields.5,
            client: fields.6)
        let logged = handler.format(
            level: .info, message: "request",
            metadata: [
                LogKey.method: .string(fields.0), LogKey.path: .string(fields.1), LogKey.route: .string(fields.2),
                LogKey.status: .stringConvertible(fields.3), LogKey.durationMS: .stringConvertible(fields.4),
                LogKey.requestID: .string(fields.5), LogKey.client: .string(fields.6),
            ])
        // Equal apart from the timestamp.
        func stripped(_ line: [UInt8]?) -> String {
            String(decoding: line ?? [], as: UTF8.self).replacing(/"ts":"[^"]*"/, with: "")
        }
        #expect(direct != nil && stripped(direct) == stripped(logged), "\(stripped(direct))\n\(stripped(logged))")
        var withMetadata = handler
        withMetadata[metadataKey: "node"] = "w1"
        #expect(withMetadata.requestLine(method: "GET", path: "/", route: "/", status: 200, durationMS: 0, requestID: "x", client: "y") == nil)
    }

    /// A line written while a task serves a request names the request, whichever logger
    /// wrote it; metadata that names one itself wins; outside a request there is none.
    @Test func linesWrittenWhileServingARequestNameIt() throws {
        let handler = JSONLogHandler(label: "millions.postgres")
        func requestID(_ line: [UInt8]) throws -> String? {
            try #require(try JSONSerialization.jsonObject(with: Data(line)) as? [String: Any])["request_id"] as? String
        }
        #expect(try requestID(handler.format(level: .warning, message: "node down", metadata: nil)) == nil)
        let (scoped, own) = RequestScope.$requestID.withValue("req-7") {
            (
                handler.format(level: .warning, message: "node down", metadata: nil),
                handler.format(level: .info, message: "x", metadata: [LogKey.requestID: "own"])
            )
        }
        #expect(try requestID(scoped) == "req-7")
        #expect(try requestID(own) == "own")
    }

    @Test func timestampsAreRFC3339WithMilliseconds() {
        let ts = JSONLogHandler.timestamp()
        #expect(ts.wholeMatch(of: /\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z/) != nil, "\(ts)")
    }

    @Test func requestIDsAreFreshAndWellFormed() {
        let ids = (0..<10_000).map { _ in RequestIDs.next() }
        #expect(Set(ids).count == ids.count)
        #expect(ids.allSatisfy { $0.count == 32 && $0.allSatisfy(\.isHexDigit) })
    }

    /// Lines appended from many tasks at once come out whole, each once, after a flush.
    /// The pipe is never closed: the sink's thread keeps its descriptor for good.
    @Test func theSinkWritesEveryLineWhole() async throws {
        var fds: [Int32] = [0, 0]
        #expect(pipe(&fds) == 0)
        let sink = LogSink(fd: fds[1])
        await withTaskGroup(of: Void.self) { group in
            for t in 0..<8 {
                group.addTask { for i in 0..<200 { sink.append(Array("{\"t\":\(t),\"i\":\(i)}\n".utf8)) } }
            }
        }
        sink.flush()  // under the pipe's 64 KiB: written whole before it returns
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65_536)
        while bytes.filter({ $0 == UInt8(ascii: "\n") }).count < 1_600 {
            let n = read(fds[0], &buffer, buffer.count)
            guard n > 0 else { break }
            bytes += buffer[0..<n]
        }
        let lines = String(decoding: bytes, as: UTF8.self).split(separator: "\n")
        #expect(lines.count == 1_600)
        #expect(Set(lines).count == 1_600)
        #expect(lines.allSatisfy { (try? JSONSerialization.jsonObject(with: Data($0.utf8))) != nil })
    }
}
