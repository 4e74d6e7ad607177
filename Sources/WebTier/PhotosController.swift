import DataTier
import Engines
import Edge
import Foundation
import HTTPTypes
import Hummingbird
import Imaging
import Logging
import MessageQueue
import MillionsCore
import NIOCore
import NIOPosix
import Observability
import Photos
import Prometheus
import SessionTier

/// Profile photos: upload (raw body or the page's multipart form), edits, job status,
/// and the immutable variant files.
struct PhotosController {
    let service: UserService
    let jobs: any JobQueue
    let requests: any PhotoRequests
    let photos: any PhotoStore
    let images: ImageProcessor
    let settings: Settings
    let metrics: AppMetrics
    let body: JSONBody

    static let immutable = "public, max-age=31536000, immutable"

    func addRoutes(to router: Router<AppRequestContext>) {
        router.post("/users/{id}/photo", use: upload)
        router.post("/users/{id}/photo/edits", use: edit)
        router.get("/jobs/{id}", use: job)
        router.get("/photos/{name}", use: file)
    }

    // MARK: Routes

    @Sendable func upload(_ request: Request, context: AppRequestContext) async throws -> Response {
        let id = try UsersController.userID(context)
        let session = try await service.requireSession(request)
        guard session.userID == id else { throw MillionsError(.forbidden, "you can only change your own photo") }
        try await service.limits.check(.upload, address: context.clientAddress, account: String(id.rawValue))
        let type = request.headers[.contentType]?.lowercased() ?? ""
        let image: [UInt8]
        var fromForm = false
        if type.hasPrefix("multipart/form-data") {
            guard let boundary = MultipartForm.boundary(contentType: request.headers[.contentType] ?? "") else {
                throw MillionsError(.badRequest, "multipart body without a boundary")
            }
            // Room for the form's other fields and part headers on top of the image.
            let raw = try await JSONBody(maxBytes: settings.photos.maxBytes + 64 * 1024).collect(request)
            // Scanning megabytes is CPU work: off the cooperative pool.
            let form = try await NIOThreadPool.singleton.runIfActive {
                try MultipartForm(Array(raw.readableBytesView), boundary: boundary)
            }
            // A form can be posted from anywhere: it must carry the session's own token.
            guard let token = form.text("csrf"), Token.constantTimeEquals(token, session.csrfToken) else {
                throw MillionsError(.csrf, "the form has expired; reload the page and try again")
            }
            guard let part = form["photo"], !part.body.isEmpty else {
                throw MillionsError(.validation, "choose a photo to upload", fields: [FieldError("photo", "is required")])
            }
            image = Array(part.body)
            fromForm = true
        } else if type.hasPrefix("image/") || type.hasPrefix("application/octet-stream") {
            image = Array(try await JSONBody(maxBytes: settings.photos.maxBytes).collect(request).readableBytesView)
        } else {
            throw MillionsError(.unsupportedMediaType, "send the image as the body (image/jpeg, image/png, image/webp) or as multipart/form-data")
        }
        let info = try await probe(image)
        let source = PhotoName.original(fileExtension: info.format.fileExtension)
        try await photos.put(image, name: source, kind: .original)
        // The new version and its job, in one transaction where the queue allows.
        guard let made = try await requests.request(user: id, source: source, edits: nil, maxAttempts: settings.queue.maxAttempts)
        else { throw MillionsError(.notFound, "no such user") }
        let jobID = made.job
        metrics.counter("photo_uploads", "Photo uploads accepted, by format", [("format", info.format.rawValue)]).increment()
        context.logger.info(
            "photo uploaded",
            metadata: ["user_id": "\(id)", "job_id": "\(jobID)", "bytes": "\(image.count)", "size": "\(info.width)x\(info.height)"])
        if fromForm, (request.headers[.accept] ?? "").contains("text/html") {
            return Response.redirect(to: "/people/\(id)?job=\(jobID)", type: .normal)
        }
        return try accepted(jobID)
    }

    @Sendable func edit(_ request: Request, context: AppRequestContext) async throws -> Response {
        let id = try UsersController.userID(context)
        let session = try await service.requireSession(request)
        guard session.userID == id else { throw MillionsError(.forbidden, "you can only change your own photo") }
        try await service.limits.check(.edit, address: context.clientAddress, account: String(id.rawValue))
        let edits = try await body.decode(EditsRequest.self, from: request).edits
        guard edits.crop != nil || edits.resize != nil || edits.sharpen != nil || edits.blur != nil else {
            throw MillionsError(.validation, "give at least one of crop, resize, sharpen, blur")
        }
        // Edits apply to the newest upload, even one still being processed.
        let noPhoto = MillionsError(.conflict, "upload a photo first")
        guard let source = try await service.users.photoSource(id: id),
            let original = try await photos.get(name: source, kind: .original)
        else { throw noPhoto }
        let info = try await probe(original)
        do {
            try edits.validate(width: info.width, height: info.height)
        } catch let e as ImageError {
            throw MillionsError(.validation, e.message)
        }
        guard let made = try await requests.request(user: id, source: nil, edits: edits, maxAttempts: settings.queue.maxAttempts)
        else { throw noPhoto }
        let jobID = made.job
        context.logger.info("photo edit queued", metadata: ["user_id": "\(id)", "job_id": "\(jobID)"])
        return try accepted(jobID)
    }

    /// A photo job's state, for the user whose photo it is (404 for anyone else's).
    @Sendable func job(_ request: Request, context: AppRequestContext) async throws -> Response {
        guard let text = context.parameters.get("id"), let jobID = Int64(text), jobID > 0 else {
            throw MillionsError(.invalidID, "job ids are positive integers")
        }
        let session = try await service.requireSession(request)
        guard let job = try await jobs.job(id: jobID), job.queue == PhotoJobs.queue,
            let payload = PhotoJobs.Payload.parse(job.payload), payload.user == session.userID.rawValue
        else { throw MillionsError(.notFound, "no such job") }
        // The worker's write is not this session's: once the session is told "done", its
        // reads must see the result, so its read-your-writes position moves past it.
        let raised = job.state == .done && job.resultPositions.contains { ReadYourWrites.current?.learned(of: $0.value, scope: $0.key) == true }
        if raised {
            metrics.counter(
                "read_your_writes_raised", "Client positions raised to an asynchronous write they learned of", [("source", "job")]
            ).increment()
        }
        return try Response.json(JobView(job, payload), headers: [.cacheControl: "no-store"])
    }

    /// A variant: immutable, so cached forever by browsers and the CDN.
    @Sendable func file(_ request: Request, context: AppRequestContext) async throws -> Response {
        guard let name = context.parameters.get("name"), PhotoName.isValid(name),
            let bytes = try await photos.get(name: name, kind: .variant)
        else { throw MillionsError(.notFound, "no such photo") }
        let etag = "\"\(name.prefix(64))\""
        var headers: HTTPFields = [.eTag: etag, .cacheControl: Self.immutable]
        if AssetCatalog.ifNoneMatch(request.headers[.ifNoneMatch], matches: etag) {
            return Response(status: .notModified, headers: headers)
        }
        headers[.contentType] = PhotoName.contentType(name)
        headers[HTTPField.Name("X-Content-Type-Options")!] = "nosniff"
        return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: bytes)))
    }

    // MARK: Helpers

    /// Format and size from the header only, within the configured bounds.
    func probe(_ image: [UInt8]) async throws -> ImageInfo {
        let limits = settings.photos.imageLimits
        do {
            return try await images.run { try Imaging.probe(image, limits: limits) }
        } catch let e as ImageError {
            metrics.counter("photo_uploads_refused", "Images refused before queueing, by reason", [("reason", e.code.rawValue)])
                .increment()
            switch e.code {
            case .notAnImage: throw MillionsError(.unsupportedMediaType, e.message)
            case .tooLarge: throw MillionsError(.payloadTooLarge, e.message)
            case .corrupt, .badEdit: throw MillionsError(.validation, "the image cannot be read: \(e.message)")
            }
        }
    }

    func accepted(_ jobID: Int64) throws -> Response {
        try Response.json(
            JobView(id: jobID, state: "queued", attempts: 0), status: .accepted,
            headers: [.location: "/jobs/\(jobID)", .cacheControl: "no-store"])
    }
}

/// `GET /jobs/{id}`: queued / running / done (with the variants) / failed (with the reason).
struct JobView: Encodable {
    var id: Int64
    var kind = PhotoJobs.queue
    var state: String
    var attempts: Int
    var url: String?
    var photo: Photo?
    var error: String?
    var lastError: String?

    init(id: Int64, state: String, attempts: Int) {
        self.id = id
        self.state = state
        self.attempts = attempts
        self.url = "/jobs/\(id)"
    }

    init(_ job: Job, _ payload: PhotoJobs.Payload) {
        switch job.state {
        case .ready:
            self.init(id: job.id, state: "queued", attempts: job.attempts)
            lastError = job.lastError.map { _ in "an earlier try failed; it will be tried again" }
        case .running:
            self.init(id: job.id, state: "running", attempts: job.attempts)
            lastError = job.lastError.map { _ in "an earlier try failed; it will be tried again" }
        case .done:
            self.init(id: job.id, state: "done", attempts: job.attempts)
            photo = PhotoJobs.photo(payload)
        case .dead:
            self.init(id: job.id, state: "failed", attempts: job.attempts)
            error = Self.publicError(job.lastError)
        }
    }

    /// What a client may see of a job's failure: the image's fault by its code, else a
    /// generic line. The worker's own text (libvips' message, internal names and
    /// addresses) stays in the logs and `millions jobs`.
    static func publicError(_ stored: String?) -> String {
        let code = stored?.split(separator: ":", maxSplits: 1).first.map(String.init) ?? ""
        switch ImageError.Code(rawValue: code) {
        case .notAnImage: return "notAnImage: the file is not an image this site reads (JPEG, PNG, WebP)"
        case .tooLarge: return "tooLarge: the image has too many pixels"
        case .corrupt: return "corrupt: the image is damaged or cut short"
        case .badEdit: return "badEdit: the edit does not fit the image"
        case nil: return "the photo could not be processed; try uploading it again"
        }
    }
}

/// `{"crop":{x,y,width,height}, "resize":{width,height}, "sharpen":{sigma}, "blur":{sigma}}`.
struct EditsRequest: StrictJSON {
    var edits: Edits
    init(from decoder: any Decoder) throws { edits = try Edits(from: decoder) }
    static let allowedKeys: [String: Set<String>] = [
        "": ["crop", "resize", "sharpen", "blur"],
        "crop": ["x", "y", "width", "height"],
        "resize": ["width", "height"],
        "sharpen": ["sigma"],
        "blur": ["sigma"],
    ]
}
