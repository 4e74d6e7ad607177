import DataTier
import Engines
import Foundation
import HTTPTypes
import HummingbirdTesting
import Imaging
import MessageQueue
import MillionsCore
import MillionsTesting
import PostgresNIO
import NIOCore
import Observability
import Photos
import Testing
@testable import WebTier

/// Uploads a raw image as `session`'s user.
func uploadPhoto(
    _ client: any TestClientProtocol, user: String, session: String, _ bytes: [UInt8], type: String = "image/png"
) async throws -> TestResponse {
    try await client.execute(
        uri: "/users/\(user)/photo", method: .post,
        headers: [.contentType: type, .cookie: "millions_session=\(session)"], body: ByteBuffer(bytes: bytes))
}

/// Polls `/jobs/{id}` until the job is done or failed.
func waitForJob(_ client: any TestClientProtocol, _ url: String, session: String, seconds: Double = 60) async throws -> [String: Any] {
    for _ in 0..<Int(seconds * 20) {
        let r = try await client.send(.get, url, cookies: ["millions_session": session])
        #expect(r.status == .ok, "\(r.text)")
        if let state = r.object["state"] as? String, state == "done" || state == "failed" { return r.object }
        try await Task.sleep(for: .milliseconds(50))
    }
    Issue.record("job \(url) did not finish")
    return [:]
}

/// Polls `/jobs/{id}` like the profile page does, keeping the cookies the answers set (as a
/// browser would), until the job is done or failed; returns the job and the cookies.
func followJob(
    _ client: any TestClientProtocol, _ url: String, cookies: [String: String], seconds: Double = 60
) async throws -> (job: [String: Any], cookies: [String: String]) {
    var cookies = cookies
    for _ in 0..<Int(seconds * 20) {
        let r = try await client.send(.get, url, cookies: cookies)
        #expect(r.status == .ok, "\(r.text)")
        for name in ["millions_session", "millions_lsn"] { if let v = r.cookie(name) { cookies[name] = v } }
        if let state = r.object["state"] as? String, state == "done" || state == "failed" { return (r.object, cookies) }
        try await Task.sleep(for: .milliseconds(50))
    }
    Issue.record("job \(url) did not finish")
    return ([:], cookies)
}

/// A user, a stored original and a queued photo job for it, without the web tier.
func stagePhotoJob(_ c: Components, _ image: [UInt8], edits: Edits?) async throws -> (User, PhotoJobs.Payload, Int64) {
    let user = try await c.users.create(
        NewAccount(
            id: UserIDGenerator().next(), email: "staged-\(UUID().uuidString.prefix(8))@example.com", passwordHash: "x",
            profile: Profile(firstName: "P", lastName: "Q")))
    let info = try Imaging.probe(image)
    let source = SHA256.hex(image) + "." + info.format.fileExtension
    try await c.photos.put(image, name: source, kind: .original)
    let ticket = try #require(try await c.users.beginPhoto(id: user.id, source: source))
    let payload = PhotoJobs.Payload(user: user.id.rawValue, version: ticket.version, source: source, edits: edits)
    return (user, payload, try await PhotoJobs.enqueue(payload, on: c.jobs, maxAttempts: 5))
}

/// Claims every queued photo job and runs it with the photo handler (oldest first, or
/// newest first); returns the jobs in the order they were queued.
func runPhotoJobs(_ c: Components, metrics: AppMetrics = AppMetrics(), newestFirst: Bool = false) async throws -> [Job] {
    let handler = PhotoJobs.handler(
        store: c.photos, users: c.users, processor: c.images, limits: c.settings.photos.imageLimits, metrics: metrics,
        forget: c.forgetPhotos, refresh: { _ in })
    var jobs: [Job] = []
    while let job = try await c.jobs.claim(queues: [PhotoJobs.queue], worker: "t", leaseSeconds: 60) { jobs.append(job) }
    for job in newestFirst ? jobs.reversed() : jobs {
        try await handler(job)
        try await c.jobs.complete(id: job.id, worker: "t")
    }
    return jobs
}

/// A multipart/form-data body with the given text fields and one file.
func multipart(boundary: String, fields: [String: String], file: (name: String, bytes: [UInt8])?) -> [UInt8] {
    var body: [UInt8] = []
    for (k, v) in fields.sorted(by: { $0.key < $1.key }) {
        body += Array("--\(boundary)\r\nContent-Disposition: form-data; name=\"\(k)\"\r\n\r\n\(v)\r\n".utf8)
    }
    if let file {
        body += Array("--\(boundary)\r\nContent-Disposition: form-data; name=\"\(file.name)\"; filename=\"me.png\"\r\nContent-Type: image/png\r\n\r\n".utf8)
        body += file.bytes + Array("\r\n".utf8)
    }
    body += Array("--\(boundary)--\r\n".utf8)
    return body
}

@Suite struct PhotoTests {
    /// Upload → 202 with a job → the in-process workers make the variants → the profile
    /// (JSON, cached before the job ran, and the page) shows them; the files are immutable.
    @Test func anUploadBecomesTheProfilePhoto() async throws {
        try await TestApp.run { client, components in
            let (id, session) = try await signUpJohn(client)
            // Warm the cache: the finished job must replace it.
            #expect(try await client.send(.get, "/users/\(id)").object["photo"] == nil)
            let original = try Imaging.testImage(width: 1200, height: 800, format: .png)
            let r = try await uploadPhoto(client, user: id, session: session, original)
            #expect(r.status == .accepted, "\(r.text)")
            let location = try #require(r.headers[.location])
            #expect(location.hasPrefix("/jobs/"))
            #expect(r.object["state"] as? String == "queued" && r.object["url"] as? String == location)

            let job = try await waitForJob(client, location, session: session)
            #expect(job["state"] as? String == "done", "\(job)")
            let variants = try #require(job["photo"] as? [String: String])
            #expect(Set(variants.keys) == ["large", "medium", "small"])

            let user = try await client.send(.get, "/users/\(id)")
            #expect(user.object["photo"] as? [String: String] == variants)
            #expect(user.text.hasSuffix(#""photo":{"large":"\#(variants["large"]!)","medium":"\#(variants["medium"]!)","small":"\#(variants["small"]!)"}}"#))

            let expected = ["large": (1024, 683), "medium": (320, 213), "small": (96, 64)]
            for (name, url) in variants {
                #expect(url.range(of: #"^/photos/[0-9a-f]{64}\.jpg$"#, options: .regularExpression) != nil)
                let file = try await client.send(.get, url)
                #expect(file.status == .ok)
                #expect(file.headers[.cacheControl] == "public, max-age=31536000, immutable")
                #expect(file.headers[.contentType] == "image/jpeg")
                let info = try Imaging.probe(Array(file.body.readableBytesView))
                #expect(info.format == .jpeg && info.width == expected[name]!.0 && info.height == expected[name]!.1, "\(name) \(info)")
                let etag = try #require(file.headers[.eTag])
                #expect(try await client.send(.get, url, headers: [.ifNoneMatch: etag]).status == .notModified)
            }
            let page = try await client.send(.get, "/people/\(id)")
            #expect(page.text.contains(#"src="\#(variants["medium"]!)""#))

            // The same photo again is a new version with names of its own (a name once
            // forgotten is never written again); the replaced variants stay for the grace
            // period, the replaced original goes at once (by the in-process worker).
            let again = try await uploadPhoto(client, user: id, session: session, original)
            let againAt = try #require(again.headers[.location])
            let second = try #require(try await waitForJob(client, againAt, session: session)["photo"] as? [String: String])
            #expect(Set(second.values).isDisjoint(with: variants.values))
            #expect(try await components.photos.list(kind: .variant).count == 6)
            for _ in 0..<1200 where try await components.photos.list(kind: .original).count != 1 {
                try await Task.sleep(for: .milliseconds(50))
            }
            #expect(try await components.photos.list(kind: .original).count == 1)

            let metrics = try await client.send(.get, "/metrics").text
            #expect(metrics.contains(#"images_processed_total{operation="thumbnail"} 6"#))
            #expect(metrics.contains(#"photo_uploads_total{format="png"} 2"#))
            #expect(metrics.contains(#"jobs_total{queue="photo",outcome="done"} 2"#))
        }
    }

    /// Deleting an account deletes its photo files (an original can carry GPS in its EXIF)
    /// and their URLs answer 404; another user's upload of the same image is a file of its
    /// own and stays.
    @Test func deletingAnAccountDeletesItsPhotoFiles() async throws {
        try await TestApp.run { client, components in
            let original = try Imaging.testImage(width: 600, height: 400, format: .png)
            var photos: [String: [String: String]] = [:]
            var sessions: [String: String] = [:]
            for email in ["leaving@example.com", "staying@example.com"] {
                let (id, session) = try await signUpJohn(client, email: email)
                let upload = try await uploadPhoto(client, user: id, session: session, original)
                let job = try await waitForJob(client, try #require(upload.headers[.location]), session: session)
                photos[id] = try #require(job["photo"] as? [String: String])
                sessions[id] = session
            }
            let (leaving, staying) = (photos.keys.sorted()[0], photos.keys.sorted()[1])
            #expect(Set(photos[leaving]!.values).isDisjoint(with: photos[staying]!.values))
            #expect(try await components.photos.list(kind: .original).count == 2)
            #expect(try await components.photos.list(kind: .variant).count == 6)

            let deleted = try await client.send(.delete, "/users/\(leaving)", cookies: ["millions_session": sessions[leaving]!])
            #expect(deleted.status == .noContent)
            // The in-process worker runs the photo.forget job (bounded wait: a minute).
            for _ in 0..<1200 {
                if try await components.photos.list(kind: .variant).count == 3 { break }
                try await Task.sleep(for: .milliseconds(50))
            }
            #expect(try await components.photos.list(kind: .original).count == 1)
            #expect(try await components.photos.list(kind: .variant).count == 3)
            for url in photos[leaving]!.values { #expect(try await client.send(.get, url).status == .notFound) }
            for url in photos[staying]!.values { #expect(try await client.send(.get, url).status == .ok) }
            let metrics = try await client.send(.get, "/metrics").text
            #expect(metrics.contains("photo_files_forgotten_total 4"), "\(metrics)")
        }
    }

    /// A photo replaced by an upload or an edit is deleted: the replaced original at once
    /// (nothing will use it), the replaced variants after `photos.replacedGraceSeconds`, so
    /// only the current photo's files stay on disk.
    @Test(arguments: [0, 3600]) func aReplacedPhotoIsForgotten(grace: Int) async throws {
        try await TestApp.run(["photos.replacedGraceSeconds": "\(grace)"]) { client, components in
            let (id, session) = try await signUpJohn(client)
            let cookie = ["millions_session": session]
            func waitForFiles(originals: Int, variants: Int) async throws {
                for _ in 0..<1200 {  // bounded: a minute
                    if try await components.photos.list(kind: .original).count == originals,
                        try await components.photos.list(kind: .variant).count == variants
                    { return }
                    try await Task.sleep(for: .milliseconds(50))
                }
            }
            var shown: [[String: String]] = []
            for image in [try Imaging.testImage(width: 400, height: 300, format: .png), try Imaging.testImage(width: 500, height: 300, format: .png)] {
                let upload = try await uploadPhoto(client, user: id, session: session, image)
                let job = try await waitForJob(client, try #require(upload.headers[.location]), session: session)
                shown.append(try #require(job["photo"] as? [String: String]))
            }
            let edit = try await client.send(.post, "/users/\(id)/photo/edits", json: #"{"blur":{"sigma":2}}"#, cookies: cookie)
            let edited = try await waitForJob(client, try #require(edit.headers[.location]), session: session)
            shown.append(try #require(edited["photo"] as? [String: String]))
            let old = Array(shown[0].values) + Array(shown[1].values)
            if grace == 0 {
                try await waitForFiles(originals: 1, variants: 4)
                #expect(try await components.photos.list(kind: .original).count == 1)
                #expect(try await components.photos.list(kind: .variant).count == 4)  // edited + 3 sizes
                for url in old { #expect(try await client.send(.get, url).status == .notFound) }
            } else {
                // Within the grace period the replaced variants still answer; the replaced
                // original is gone already.
                try await waitForFiles(originals: 1, variants: 10)
                #expect(try await components.photos.list(kind: .original).count == 1)
                for url in old { #expect(try await client.send(.get, url).status == .ok) }
            }
            for url in shown[2].values { #expect(try await client.send(.get, url).status == .ok) }
            #expect(try await client.send(.get, "/users/\(id)").object["photo"] as? [String: String] == shown[2])
        }
    }

    /// Edits apply to the original: crop, resize, sharpen, blur → an `edited` variant of
    /// the asked size, and thumbnails of it.
    @Test func editsMakeANewPhotoFromTheOriginal() async throws {
        try await TestApp.run { client, _ in
            let (id, session) = try await signUpJohn(client)
            let cookie = ["millions_session": session]
            let noPhoto = try await client.send(.post, "/users/\(id)/photo/edits", json: #"{"blur":{"sigma":2}}"#, cookies: cookie)
            #expect(noPhoto.status == .conflict)
            let upload = try await uploadPhoto(client, user: id, session: session, try Imaging.testImage(width: 1200, height: 800, format: .jpeg), type: "image/jpeg")
            let first = try await waitForJob(client, try #require(upload.headers[.location]), session: session)
            let edit = try await client.send(
                .post, "/users/\(id)/photo/edits",
                json: #"{"crop":{"x":100,"y":0,"width":800,"height":800},"resize":{"width":400,"height":400},"sharpen":{"sigma":1},"blur":{"sigma":1.5}}"#,
                cookies: cookie)
            #expect(edit.status == .accepted, "\(edit.text)")
            let job = try await waitForJob(client, try #require(edit.headers[.location]), session: session)
            #expect(job["state"] as? String == "done", "\(job)")
            let variants = try #require(job["photo"] as? [String: String])
            #expect(Set(variants.keys) == ["edited", "large", "medium", "small"])
            #expect(variants["large"] != (first["photo"] as? [String: String])?["large"])
            for (name, size) in [("edited", 400), ("large", 400), ("medium", 320), ("small", 96)] {
                let file = try await client.send(.get, variants[name]!)
                #expect(try Imaging.probe(Array(file.body.readableBytesView)) == ImageInfo(format: .jpeg, width: size, height: size), "\(name)")
            }
            #expect(try await client.send(.get, "/users/\(id)").object["photo"] as? [String: String] == variants)
            let metrics = try await client.send(.get, "/metrics").text
            for op in ["crop", "resize", "sharpen", "blur"] {
                #expect(metrics.contains(#"images_processed_total{operation="\#(op)"} 1"#), "\(op)")
            }
        }
    }

    /// Nothing a client sends about photos gets a 5xx.
    @Test func badPhotoRequestsGetClear4xx() async throws {
        try await TestApp.run(["photos.maxBytes": "65536"]) { client, components in
            let (id, session) = try await signUpJohn(client)
            let (otherID, otherSession) = try await signUpJohn(client, email: "jane@example.com")
            let png = try Imaging.testImage(width: 64, height: 48, format: .png)

            let notImage = try await uploadPhoto(client, user: id, session: session, Array("%PDF-1.7 not a picture".utf8))
            #expect(notImage.status == .unsupportedMediaType && notImage.errorCode == "unsupported_media_type")
            let bomb = try await uploadPhoto(client, user: id, session: session, PNGBomb.make(width: 50_000, height: 50_000))
            #expect(bomb.status == .contentTooLarge && bomb.errorCode == "payload_too_large", "\(bomb.text)")
            let big = try await uploadPhoto(client, user: id, session: session, [0xFF, 0xD8, 0xFF] + Array(repeating: 0, count: 70_000))
            #expect(big.status == .contentTooLarge)
            let header = try await uploadPhoto(client, user: id, session: session, [0xFF, 0xD8, 0xFF, 0xE0, 1, 2, 3])
            #expect(header.status == .unprocessableContent, "\(header.text)")
            let text = try await uploadPhoto(client, user: id, session: session, png, type: "text/plain")
            #expect(text.status == .unsupportedMediaType)
            let anonymous = try await client.execute(uri: "/users/\(id)/photo", method: .post, headers: [.contentType: "image/png"], body: ByteBuffer(bytes: png))
            #expect(anonymous.status == .unauthorized)
            let someoneElses = try await uploadPhoto(client, user: otherID, session: session, png)
            #expect(someoneElses.status == .forbidden)
            #expect(try await uploadPhoto(client, user: "abc", session: session, png).status == .badRequest)

            let cookie = ["millions_session": session]
            let ok = try await uploadPhoto(client, user: id, session: session, png)
            let url = try #require(ok.headers[.location])
            _ = try await waitForJob(client, url, session: session)
            for (json, status) in [
                (#"{"crop":{"x":0,"y":0,"width":65,"height":10}}"#, HTTPResponse.Status.unprocessableContent),
                // Sums of these would overflow: refused, not a crash.
                (#"{"crop":{"x":9223372036854775807,"y":0,"width":1,"height":1}}"#, .unprocessableContent),
                (#"{"crop":{"x":1,"y":1,"width":9223372036854775807,"height":9223372036854775807}}"#, .unprocessableContent),
                (#"{"blur":{"sigma":99}}"#, .unprocessableContent),
                (#"{"resize":{"width":0,"height":10}}"#, .unprocessableContent),
                ("{}", .unprocessableContent),
                (#"{"rotate":90}"#, .badRequest),
                (#"{"crop":{"x":0,"y":0,"width":10,"height":10,"z":1}}"#, .badRequest),
                (#"{"crop":{"x":"a"}}"#, .badRequest),
                ("[1]", .badRequest),
            ] {
                let r = try await client.send(.post, "/users/\(id)/photo/edits", json: json, cookies: cookie)
                #expect(r.status == status, "\(json) → \(r.status) \(r.text)")
                #expect(r.errorCode != nil)
            }

            // Jobs are private to their user; malformed ids are 400.
            #expect(try await client.send(.get, url, cookies: ["millions_session": otherSession]).status == .notFound)
            #expect(try await client.send(.get, url).status == .unauthorized)
            #expect(try await client.send(.get, "/jobs/abc", cookies: cookie).status == .badRequest)
            #expect(try await client.send(.get, "/jobs/999999", cookies: cookie).status == .notFound)

            // File names are hashes: anything else, including traversal, is not found.
            for name in ["..%2F..%2Fetc%2Fpasswd", "%2e%2e", String(repeating: "a", count: 64) + ".jpg", "x.jpg", String(repeating: "A", count: 64) + ".jpg"] {
                let r = try await client.send(.get, "/photos/\(name)")
                #expect(r.status == .notFound, "\(name)")
                #expect(r.errorCode == "not_found")
            }
            #expect(try await client.send(.get, "/photos/../millions.sqlite").status == .notFound)
            #expect(try await components.photos.list(kind: .original).count == 1)
        }
    }

    /// A file with a good header and broken data passes the upload check and fails its
    /// job, once (no retries), with the reason.
    @Test func aCorruptImageFailsItsJobWithAReason() async throws {
        try await TestApp.run { client, _ in
            let (id, session) = try await signUpJohn(client)
            let good = try Imaging.testImage(width: 640, height: 480, format: .png)
            let corrupt = Array(good.prefix(good.count / 3))
            let r = try await uploadPhoto(client, user: id, session: session, corrupt)
            #expect(r.status == .accepted, "\(r.text)")
            let job = try await waitForJob(client, try #require(r.headers[.location]), session: session)
            #expect(job["state"] as? String == "failed")
            #expect(job["attempts"] as? Int == 1)
            // The reason, in words for the user; libvips' own text stays in the logs.
            #expect(job["error"] as? String == "corrupt: the image is damaged or cut short", "\(job)")
            #expect(JobView.publicError("the original photo 0f.jpg is missing") == "the photo could not be processed; try uploading it again")
            #expect(job["photo"] == nil)
            #expect(try await client.send(.get, "/users/\(id)").object["photo"] == nil)
            #expect(try await client.send(.get, "/metrics").text.contains(#"image_failures_total{reason="corrupt"} 1"#))
        }
    }

    /// The profile page's form: multipart with the session's CSRF token, then back to the
    /// page, which knows the job.
    @Test func thePageFormUploadsAsMultipart() async throws {
        try await TestApp.run { client, _ in
            let (id, session) = try await signUpJohn(client)
            let cookie = ["millions_session": session]
            let page = try await client.send(.get, "/people/\(id)", cookies: cookie)
            #expect(page.text.contains(#"enctype="multipart/form-data""#))
            let csrf = try #require(page.text.firstMatch(of: /name="csrf" value="([0-9a-f]+)"/)?.1)
            let png = try Imaging.testImage(width: 300, height: 200, format: .png)
            func post(_ fields: [String: String], file: [UInt8]?) async throws -> TestResponse {
                try await client.execute(
                    uri: "/users/\(id)/photo", method: .post,
                    headers: [.contentType: "multipart/form-data; boundary=XyZ123", .cookie: "millions_session=\(session)", .accept: "text/html"],
                    body: ByteBuffer(bytes: multipart(boundary: "XyZ123", fields: fields, file: file.map { ("photo", $0) })))
            }
            #expect(try await post([:], file: png).status == .forbidden)
            #expect(try await post(["csrf": "0000"], file: png).status == .forbidden)
            #expect(try await post(["csrf": String(csrf)], file: nil).status == .unprocessableContent)
            let ok = try await post(["csrf": String(csrf)], file: png)
            #expect(ok.status == .seeOther)
            let location = try #require(ok.headers[.location])
            let jobID = try #require(location.firstMatch(of: /\/people\/\d+\?job=(\d+)/)?.1)
            let back = try await client.send(.get, location, cookies: cookie)
            #expect(back.text.contains(#"data-job="\#(jobID)""#))
            let job = try await waitForJob(client, "/jobs/\(jobID)", session: session)
            #expect(job["state"] as? String == "done")
            let garbage = try await client.execute(
                uri: "/users/\(id)/photo", method: .post,
                headers: [.contentType: "multipart/form-data; boundary=XyZ123", .cookie: "millions_session=\(session)"],
                body: ByteBuffer(string: "--XyZ123\r\nno headers end"))
            #expect(garbage.status == .badRequest)
        }
    }

    /// Running one job twice writes the same variants once; an older job never replaces a
    /// newer job's photo.
    @Test func aJobRunTwiceMakesItsVariantsOnce() async throws {
        try await TestApp.withTemporaryDirectory { dir in
            let settings = try TestApp.settings(dataDirectory: dir, ["queue.inProcessWorkers": "0"])
            let c = try await TestApp.components(settings)
            let (user, payload, id) = try await stagePhotoJob(
                c, try Imaging.testImage(width: 500, height: 500, format: .webp), edits: Edits(blur: .init(sigma: 2)))
            let source = payload.source
            let job = try #require(try await c.jobs.job(id: id))
            let handler = PhotoJobs.handler(
                store: c.photos, users: c.users, processor: c.images, limits: settings.photos.imageLimits, metrics: AppMetrics(),
                forget: c.forgetPhotos, refresh: { _ in })
            try await handler(job)
            let once = try await c.photos.list(kind: .variant)
            try await handler(job)
            #expect(try await c.photos.list(kind: .variant) == once)
            #expect(once.count == 4)
            #expect(Set(once) == Set(PhotoJobs.variantFiles(payload).values))
            #expect(try FileManager.default.contentsOfDirectory(atPath: settings.photos.directory + "/tmp").isEmpty)
            #expect(try await c.users.user(id: user.id)?.photo == PhotoJobs.photo(payload))
            // An older version finishing late does not replace the newer photo.
            let older = PhotoJobs.photo(PhotoJobs.Payload(user: user.id.rawValue, version: payload.version - 1, source: source))
            #expect(try await c.users.setPhoto(id: user.id, photo: older, version: payload.version - 1) == .notShown)
            #expect(try await c.users.user(id: user.id)?.photo == PhotoJobs.photo(payload))
            #expect(id > 0)
            // Versions count per user; an edit starts from the newest upload.
            #expect(try await c.users.beginPhoto(id: user.id, source: nil) == PhotoTicket(version: payload.version + 1, source: source))
            #expect(try await c.users.beginPhoto(id: UserID(rawValue: 12345)!, source: nil) == nil)
            try c.database?.close()
        }
    }

    /// The same flow on PostgreSQL: migration, transactional queue, photo columns.
    @Test func photosWorkOnPostgres() async throws {
        let topology = try PostgresTopology.shared()
        try await TestApp.runPostgres(topology, ["queue.inProcessWorkers": "2", "cache.backend": "none"]) { client, _ in
            let email = "photo-\(UUID().uuidString.prefix(8))@example.com"
            let (id, session) = try await signUpJohn(client, email: email)
            let r = try await uploadPhoto(client, user: id, session: session, try Imaging.testImage(width: 400, height: 300, format: .jpeg))
            #expect(r.status == .accepted, "\(r.text)")
            // The session that saw "done" reads the photo; an anonymous reader may be sent to
            // a replica that has not replayed the worker's write yet (staleness within the lag
            // bound), so it is promised nothing here.
            let (job, cookies) = try await followJob(client, try #require(r.headers[.location]), cookies: ["millions_session": session])
            #expect(job["state"] as? String == "done", "\(job)")
            let photo = try await client.send(.get, "/users/\(id)", cookies: cookies).object["photo"] as? [String: String]
            #expect(photo != nil && photo == job["photo"] as? [String: String])
            let edit = try await client.send(.post, "/users/\(id)/photo/edits", json: #"{"sharpen":{"sigma":1}}"#, cookies: ["millions_session": session])
            #expect(edit.status == .accepted, "\(edit.text)")
            #expect(try await waitForJob(client, try #require(edit.headers[.location]), session: session)["state"] as? String == "done")
        }
    }

    /// `photos.store=postgres` (multi-dc): originals and variants are large objects in the
    /// database, so they replicate with the data; no file is written to a folder.
    @Test func photosInPostgresAreServedFromTheDatabase() async throws {
        // A topology of its own: in-process workers would take other tests' photo jobs.
        try await PostgresTopology.withFresh { topology in
            let folder = NSTemporaryDirectory() + "photos-pg-\(UUID().uuidString)"
            defer { try? FileManager.default.removeItem(atPath: folder) }
            let settings = ["queue.inProcessWorkers": "2", "cache.backend": "none", "photos.store": "postgres", "photos.directory": folder]
            try await TestApp.runPostgres(topology, settings) { client, components in
                let store = try #require(components.photos as? PostgresPhotoStore)
                let (id, session) = try await signUpJohn(client, email: uniqueEmail("photo-pg"))
                let r = try await uploadPhoto(client, user: id, session: session, try Imaging.testImage(width: 400, height: 300, format: .jpeg))
                #expect(r.status == .accepted, "\(r.text)")
                let (job, cookies) = try await followJob(client, try #require(r.headers[.location]), cookies: ["millions_session": session])
                #expect(job["state"] as? String == "done", "\(job)")
                let small = try #require((job["photo"] as? [String: String])?["small"])
                let served = try await client.send(.get, small, cookies: cookies)
                #expect(served.status == .ok && served.headers[.contentType] == "image/jpeg")
                #expect(try Imaging.probe(Array(served.body.readableBytesView)).width <= 400)
                // A second put of a name is a no-op: names are content hashes.
                let name = try #require(small.split(separator: "/").last.map(String.init))
                let before = try await store.get(name: name, kind: .variant)
                try await store.put([1, 2, 3], name: name, kind: .variant)
                #expect(try await store.get(name: name, kind: .variant) == before)
                #expect(try await store.list(kind: .original).count == 1)
                #expect(try await store.get(name: String(repeating: "0", count: 64) + ".jpg", kind: .variant) == nil)
                #expect(!FileManager.default.fileExists(atPath: folder), "no photo folder")
            }
        }
    }

    /// `queue.engine=redis`: the same photo flow with its jobs on Redis Streams.
    @Test func photosRunOnTheRedisQueue() async throws {
        try await RedisServer.with { server in
            try await TestApp.run(["queue.engine": "redis", "redis.address": server.address]) { client, components in
                #expect(components.jobs is RedisJobQueue)
                let (id, session) = try await signUpJohn(client)
                let r = try await uploadPhoto(client, user: id, session: session, try Imaging.testImage(width: 640, height: 480, format: .webp))
                #expect(r.status == .accepted, "\(r.text)")
                let job = try await waitForJob(client, try #require(r.headers[.location]), session: session)
                #expect(job["state"] as? String == "done", "\(job)")
                #expect(try await client.send(.get, "/users/\(id)").object["photo"] as? [String: String] == job["photo"] as? [String: String])
                let stats = try await components.jobs.stats().first { $0.queue == PhotoJobs.queue }
                #expect(stats?.done == 1 && stats?.ready == 0 && stats?.running == 0)
            }
        }
    }

    /// A phone picture stored sideways (EXIF orientation 6): edits are judged against the
    /// upright image, as the worker applies them, and the variants come out upright.
    @Test func editsFollowTheUprightImage() async throws {
        try await TestApp.run { client, _ in
            let (id, session) = try await signUpJohn(client)
            let sideways = try Imaging.testImage(width: 800, height: 600, format: .jpeg, orientation: 6)
            #expect(try Imaging.probe(sideways) == ImageInfo(format: .jpeg, width: 600, height: 800))
            let upload = try await uploadPhoto(client, user: id, session: session, sideways, type: "image/jpeg")
            let first = try await waitForJob(client, try #require(upload.headers[.location]), session: session)
            let large = try #require((first["photo"] as? [String: String])?["large"])
            #expect(try Imaging.probe(Array(try await client.send(.get, large).body.readableBytesView)) == ImageInfo(format: .jpeg, width: 600, height: 800))
            let cookie = ["millions_session": session]
            let tooWide = try await client.send(.post, "/users/\(id)/photo/edits", json: #"{"crop":{"x":0,"y":0,"width":800,"height":600}}"#, cookies: cookie)
            #expect(tooWide.status == .unprocessableContent)
            let upright = try await client.send(.post, "/users/\(id)/photo/edits", json: #"{"crop":{"x":0,"y":0,"width":600,"height":700}}"#, cookies: cookie)
            #expect(upright.status == .accepted, "\(upright.text)")
            let job = try await waitForJob(client, try #require(upright.headers[.location]), session: session)
            let edited = try #require((job["photo"] as? [String: String])?["edited"], "\(job)")
            #expect(try Imaging.probe(Array(try await client.send(.get, edited).body.readableBytesView)) == ImageInfo(format: .jpeg, width: 600, height: 700))
        }
    }

    /// Upload, then edit before the upload's job has run: the edit applies to the new
    /// upload, and its photo is the one shown, whichever job finishes last.
    @Test func anEditRightAfterAnUploadEditsTheNewUpload() async throws {
        try await TestApp.run(["queue.inProcessWorkers": "0"]) { client, components in
            let (id, session) = try await signUpJohn(client)
            let a = try Imaging.testImage(width: 400, height: 300, format: .png)
            let b = try Imaging.testImage(width: 500, height: 300, format: .png)
            _ = try await uploadPhoto(client, user: id, session: session, a)
            _ = try await uploadPhoto(client, user: id, session: session, b)
            let edit = try await client.send(
                .post, "/users/\(id)/photo/edits", json: #"{"crop":{"x":0,"y":0,"width":450,"height":300}}"#,
                cookies: ["millions_session": session])
            #expect(edit.status == .accepted, "\(edit.text)")  // 450 fits B (500 wide), not A
            // Run the three jobs newest first: the older ones must not replace the edit.
            let jobs = try await runPhotoJobs(components, newestFirst: true)
            #expect(jobs.count == 3)
            let editPayload = try #require(PhotoJobs.Payload.parse(jobs[2].payload))
            #expect(editPayload.source == PhotoJobs.Payload.parse(jobs[1].payload)?.source)
            #expect(try await client.send(.get, "/users/\(id)").object["photo"] as? [String: String] == PhotoJobs.photo(editPayload).variants)
        }
    }

    /// Jobs of versions a newer request has superseded render nothing (an edit costs a full
    /// decode and encode), and an original no version will use again is deleted.
    @Test func supersededPhotoJobsRenderNothing() async throws {
        try await TestApp.run(["queue.inProcessWorkers": "0"]) { client, components in
            let (id, session) = try await signUpJohn(client)
            let a = try Imaging.testImage(width: 400, height: 300, format: .png)
            let b = try Imaging.testImage(width: 500, height: 300, format: .png)
            _ = try await uploadPhoto(client, user: id, session: session, a)
            _ = try await uploadPhoto(client, user: id, session: session, b)
            let edit = try await client.send(
                .post, "/users/\(id)/photo/edits", json: #"{"blur":{"sigma":2}}"#, cookies: ["millions_session": session])
            #expect(edit.status == .accepted, "\(edit.text)")
            let metrics = AppMetrics()
            // Oldest first, as a queue runs them.
            let jobs = try await runPhotoJobs(components, metrics: metrics)
            #expect(jobs.count == 3)
            let editPayload = try #require(PhotoJobs.Payload.parse(jobs[2].payload))
            #expect(try await components.photos.list(kind: .variant).count == 4)  // edited + 3 sizes
            #expect(try await components.photos.list(kind: .original) == [editPayload.source])
            #expect(String(decoding: metrics.exposition(), as: UTF8.self).contains("photo_jobs_superseded_total 2"))
            #expect(try await client.send(.get, "/users/\(id)").object["photo"] as? [String: String] == PhotoJobs.photo(editPayload).variants)
        }
    }

    /// A photo version and its job are written together or not at all (SQLite and
    /// PostgreSQL: one transaction).
    @Test(arguments: Engine.allCases) func aPhotoRequestIsAllOrNothing(engine: Engine) async throws {
        // `isolated`: no other test writes to this queue, so its count is exact.
        let check: @Sendable (Components, Bool) async throws -> Void = { c, isolated in
            let before = try await c.jobs.stats().first { $0.queue == PhotoJobs.queue }?.ready ?? 0
            let ghost = UserIDGenerator().next()
            #expect(try await c.photoRequests.request(user: ghost, source: String(repeating: "a", count: 64) + ".png", edits: nil, maxAttempts: 3) == nil)
            let user = try await c.users.create(
                NewAccount(id: UserIDGenerator().next(), email: "req-\(UUID().uuidString.prefix(8))@example.com", passwordHash: "x", profile: Profile(firstName: "R", lastName: "Q")))
            // An edit with nothing to edit: no version, no job.
            #expect(try await c.photoRequests.request(user: user.id, source: nil, edits: Edits(blur: .init(sigma: 1)), maxAttempts: 3) == nil)
            let after = try await c.jobs.stats().first { $0.queue == PhotoJobs.queue }?.ready ?? 0
            if isolated { #expect(after == before) }
            let source = String(repeating: "b", count: 64) + ".jpg"
            let made = try #require(try await c.photoRequests.request(user: user.id, source: source, edits: nil, maxAttempts: 3))
            #expect(made.payload == PhotoJobs.Payload(user: user.id.rawValue, version: 1, source: source))
            let job = try #require(try await c.jobs.job(id: made.job))
            #expect(PhotoJobs.Payload.parse(job.payload) == made.payload && job.maxAttempts == 3)
            let edit = try #require(try await c.photoRequests.request(user: user.id, source: nil, edits: Edits(blur: .init(sigma: 1)), maxAttempts: 3))
            #expect(edit.payload.version == 2 && edit.payload.source == source && edit.job > made.job)
        }
        switch engine {
        case .sqlite:
            try await TestApp.withTemporaryDirectory { dir in
                let c = try await TestApp.components(try TestApp.settings(dataDirectory: dir, ["queue.inProcessWorkers": "0"]))
                #expect(c.photoRequests is SQLitePhotoRequests)
                try await check(c, true)
                try c.database?.close()
            }
        case .postgres:
            try await TestApp.runPostgres(try PostgresTopology.shared(), ["queue.inProcessWorkers": "0"]) { _, c in
                #expect(c.photoRequests is PostgresPhotoRequests)
                try await check(c, false)
            }
        }
    }

    /// Replicas frozen (as if far behind): once the job is done, a reader with no session
    /// (routed to a replica) still sees the new photo, because the worker filled the cache
    /// from the primary, not a reader from a replica that lacks the write.
    @Test func aFinishedPhotoIsSeenEvenWhileReplicasLag() async throws {
        try await PostgresTopology.withFresh { t in
            try await TestApp.runPostgres(t, ["queue.inProcessWorkers": "1", "cache.backend": "memory"]) { client, components in
                let (id, session) = try await signUpJohn(client, email: uniqueEmail("lag-photo"))
                try await waitUntilReplicasReplay(components.replicaSet!, try await components.replicaSet!.primaryPosition())
                try t.pauseReplicas()
                defer { t.resumeReplicas() }
                let r = try await uploadPhoto(client, user: id, session: session, try Imaging.testImage(width: 300, height: 200, format: .jpeg), type: "image/jpeg")
                let job = try await waitForJob(client, try #require(r.headers[.location]), session: session)
                #expect(job["state"] as? String == "done", "\(job)")
                let seen = try await client.send(.get, "/users/\(id)").object["photo"] as? [String: String]
                #expect(seen != nil && seen == job["photo"] as? [String: String])
            }
        }
    }

    /// Read-your-writes through the queue: a session told its job is done reads the job's
    /// result on its next request, every time, even with every replica behind the worker's
    /// write. The replicas have the upload (so the session's own write position alone would
    /// let its read go to them) and then stop replaying; a worker makes the photo; the
    /// `GET /jobs/{id}` that says "done" moves the session's position past the worker's
    /// write. On both queue drivers whose jobs sit beside PostgreSQL data.
    @Test(arguments: ["postgres", "redis"]) func aSessionToldItsJobIsDoneReadsTheResult(queue: String) async throws {
        try await RedisServer.with { redis in
            try await PostgresTopology.withFresh { t in
                var settings = ["queue.inProcessWorkers": "0", "cache.backend": "none", "data.postgres.maxLagSeconds": "3600"]
                if queue == "redis" { settings.merge(["queue.engine": "redis", "redis.address": redis.address]) { $1 } }
                try await TestApp.runPostgres(t, settings) { client, c in
                    let set = try #require(c.replicaSet)
                    let (id, session) = try await signUpJohn(client, email: uniqueEmail("told-done"))
                    var cookies = ["millions_session": session]
                    for round in 1...3 {
                        let image = try Imaging.testImage(width: 200 + round, height: 100, format: .png)
                        let r = try await client.execute(
                            uri: "/users/\(id)/photo", method: .post,
                            headers: [.contentType: "image/png", .cookie: cookies.map { "\($0.key)=\($0.value)" }.joined(separator: "; ")],
                            body: ByteBuffer(bytes: image))
                        #expect(r.status == .accepted, "\(r.text)")
                        let uploaded = try #require(r.cookie("millions_lsn"))
                        cookies["millions_lsn"] = uploaded
                        try await waitUntilReplicasReplay(set, LSN.offset(of: try #require(UInt64(uploaded, radix: 16))))
                        try t.pauseReplay("r1")
                        try t.pauseReplay("r2")
                        let worker = c.engines.worker(concurrency: 1)
                        let running = Task { try await worker.run() }
                        let (job, seen) = try await followJob(client, try #require(r.headers[.location]), cookies: cookies)
                        running.cancel()
                        _ = try? await running.value
                        #expect(job["state"] as? String == "done", "round \(round): \(job)")
                        #expect(UInt64(seen["millions_lsn"] ?? "", radix: 16) ?? 0 > UInt64(uploaded, radix: 16)!, "round \(round): position not raised")
                        cookies = seen
                        let me = try await client.send(.get, "/users/\(id)", cookies: cookies)
                        #expect(me.status == .ok)
                        #expect(me.object["photo"] as? [String: String] == job["photo"] as? [String: String], "round \(round)")
                        try t.resumeReplay("r1")
                        try t.resumeReplay("r2")
                    }
                    let raised = String(decoding: c.metrics.exposition(), as: UTF8.self).split(separator: "\n").first { $0.hasPrefix("read_your_writes_raised_total") }
                    #expect(raised?.hasSuffix(" 3") == true, "\(raised ?? "no read_your_writes_raised_total")")
                }
            }
        }
    }
}

/// The same on a sharded tier: the worker's write is on the user's cluster, so the job's
/// result names that cluster's position, and the session told "done" reads the new photo
/// with every replica of both clusters frozen.
@Suite struct ShardedPhotoTests {
    @Test func aSessionToldItsJobIsDoneReadsTheResultOnItsCluster() async throws {
        try await PostgresTopology.withFresh(replicas: 1) { a in
            try await PostgresTopology.withFresh(replicas: 1) { b in
                try await TestApp.withTemporaryDirectory { dir in
                    let settings = try TestApp.settings(
                        dataDirectory: dir,
                        [
                            "data.engine": "sharded",
                            "data.shards.clusters": "a=\(a.addresses.joined(separator: ","));b=\(b.addresses.joined(separator: ","))",
                            "data.postgres.timeoutMs": "10000", "data.postgres.discoveryMs": "100", "data.postgres.maxLagSeconds": "3600",
                            "data.shards.gatherMs": "60000", "queue.inProcessWorkers": "0", "cache.backend": "none",
                        ])
                    let c = try await TestApp.components(settings)
                    try await buildApplication(c).test(.router) { client in
                        try await c.engines.prepare()
                        let (id, session) = try await signUpJohn(client, email: uniqueEmail("sharded-told-done"))
                        let image = try Imaging.testImage(width: 220, height: 100, format: .png)
                        let r = try await client.execute(
                            uri: "/users/\(id)/photo", method: .post,
                            headers: [.contentType: "image/png", .cookie: "millions_session=\(session)"], body: ByteBuffer(bytes: image))
                        #expect(r.status == .accepted, "\(r.text)")
                        let uploaded = try #require(r.cookie("millions_lsn"))
                        #expect(uploaded.contains("."), "a sharded position names its cluster: \(uploaded)")
                        // Every replica has the upload, then stops replaying.
                        for t in [a, b] {
                            let set = try ReplicationTests.replicaSet(t)
                            try await set.withRunning {
                                let position = try await set.primaryPosition()
                                #expect(await set.waitForReplay(of: position, timeout: .seconds(60)) == [])
                            }
                            try t.pauseReplay("r1")
                        }
                        defer { for t in [a, b] { try? t.resumeReplay("r1") } }
                        // Let discovery see the replicas caught up with the upload, so reads
                        // at the upload's position may go to them.
                        try await Task.sleep(for: .milliseconds(500))
                        let worker = c.engines.worker(concurrency: 1)
                        let running = Task { try await worker.run() }
                        let (job, seen) = try await followJob(
                            client, try #require(r.headers[.location]), cookies: ["millions_session": session, "millions_lsn": uploaded])
                        running.cancel()
                        _ = try? await running.value
                        #expect(job["state"] as? String == "done", "\(job)")
                        let raised = ReadYourWrites.positions(cookie: seen["millions_lsn"] ?? "")
                        let before = ReadYourWrites.positions(cookie: uploaded)
                        #expect(raised.contains { $0.value > before[$0.key] ?? 0 }, "position not raised: \(uploaded) → \(raised)")
                        let me = try await client.send(.get, "/users/\(id)", cookies: seen)
                        #expect(me.status == .ok)
                        #expect(me.object["photo"] as? [String: String] == job["photo"] as? [String: String])
                    }
                }
            }
        }
    }
}

/// Waits (up to a minute) until discovery has seen every replica replay past `position`,
/// so the read router may send reads there.
func waitUntilReplicasReplay(_ set: ReplicaSet, _ position: UInt64) async throws {
    for _ in 0..<1200 {
        let replicas = set.statuses.filter { $0.role == .replica && $0.reachable }
        if replicas.count == 2 && replicas.allSatisfy({ $0.lsn >= position }) { return }
        try await Task.sleep(for: .milliseconds(50))
    }
    Issue.record("the replicas did not replay \(LSN.format(position)) within a minute")
}
