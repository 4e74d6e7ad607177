// swift-tools-version:6.1
import PackageDescription

// One settings array for every target: Swift 6 mode plus the upcoming features
// the model server codebases turn on.
let swiftSettings: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("MemberImportVisibility"),
]

let package = Package(
    name: "Millions",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "millions", targets: ["millions"])
    ],
    dependencies: [
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        .package(url: "https://github.com/hummingbird-project/hummingbird-auth", from: "2.5.0"),
        .package(url: "https://github.com/hummingbird-project/swift-mustache", from: "2.1.1"),
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.10.0"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-configuration", from: "1.4.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-extras", from: "1.35.2"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.37.0"),
        .package(url: "https://github.com/apple/swift-http-types", from: "1.8.0"),
        .package(url: "https://github.com/apple/swift-system", from: "1.8.1"),
        .package(url: "https://github.com/vapor/postgres-nio", from: "1.33.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.2.0"),
    ],
    targets: [
        // Domain types, ids, validation, errors. No I/O.
        .target(
            name: "MillionsCore",
            swiftSettings: swiftSettings
        ),
        // Logs, metrics, request ids.
        .target(
            name: "Observability",
            dependencies: [
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ],
            swiftSettings: swiftSettings
        ),
        // Store protocols and their engines: SQLite, and PostgreSQL primary + replicas.
        .target(
            name: "DataTier",
            dependencies: [
                .product(name: "Configuration", package: "swift-configuration"),
                "MillionsCore",
                "Observability",
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // A Redis client on SwiftNIO: RESP2/RESP3 codec, pipelined connections, a pool.
        .target(
            name: "RedisClient",
            dependencies: [
                .product(name: "Configuration", package: "swift-configuration"),
                "Observability",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // A durable job queue with leases (SQLite, PostgreSQL) and the worker runtime.
        .target(
            name: "MessageQueue",
            dependencies: [
                .product(name: "Configuration", package: "swift-configuration"),
                "MillionsCore",
                "DataTier",
                "Observability",
                "RedisClient",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // libvips through C; the shim wraps the variadic calls Swift cannot make.
        .systemLibrary(
            name: "CVips",
            pkgConfig: "vips",
            providers: [.apt(["libvips-dev"])]
        ),
        // Images: type detection, header bounds, thumbnail, crop, resize, sharpen, blur.
        .target(
            name: "Imaging",
            dependencies: [
                "CVips",
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        // Photos: file storage (a folder, shared in a cluster) and the photo job kind.
        .target(
            name: "Photos",
            dependencies: [
                .product(name: "Configuration", package: "swift-configuration"),
                "MillionsCore",
                "DataTier",
                "Imaging",
                "MessageQueue",
                "Observability",
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        // The shared session store: SQL tables (SQLite, PostgreSQL) or Redis.
        .target(
            name: "SessionTier",
            dependencies: [
                .product(name: "Configuration", package: "swift-configuration"),
                "MillionsCore",
                "DataTier",
                "RedisClient",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // Cache protocol, in-process LRU, read-through with single-flight and leases,
        // and the memcached client and pool.
        .target(
            name: "CacheTier",
            dependencies: [
                .product(name: "Configuration", package: "swift-configuration"),
                "MillionsCore",
                "Observability",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // Content-hashed static assets: what a CDN caches forever.
        .target(
            name: "Edge",
            dependencies: ["MillionsCore"],
            swiftSettings: swiftSettings
        ),
        // The composition below the web tier: one value per data engine, the engines a
        // role needs built from each tier's settings, and their lifecycle.
        .target(
            name: "Engines",
            dependencies: [
                "MillionsCore",
                "Observability",
                "DataTier",
                "SessionTier",
                "CacheTier",
                "RedisClient",
                "MessageQueue",
                "Photos",
                "Imaging",
                .product(name: "Configuration", package: "swift-configuration"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // The Hummingbird application: controllers, middleware, pages.
        .target(
            name: "WebTier",
            dependencies: [
                "MillionsCore",
                "Observability",
                "Engines",
                "DataTier",
                "SessionTier",
                "CacheTier",
                "RedisClient",
                "MessageQueue",
                "Photos",
                "Imaging",
                "Edge",
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdBcrypt", package: "hummingbird-auth"),
                .product(name: "Mustache", package: "swift-mustache"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "Configuration", package: "swift-configuration"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                // HTTP parts as Hummingbird's channel carries them (the connection limits).
                .product(name: "NIOHTTPTypes", package: "swift-nio-extras"),
            ],
            resources: [
                .copy("Resources/templates"),
                .copy("Resources/public"),
                .copy("Resources/openapi.yaml"),
            ],
            swiftSettings: swiftSettings
        ),
        // `millions cluster`: stages, server configuration, processes, failure drills.
        .target(
            name: "Cluster",
            dependencies: [
                // The delaying relay that emulates a WAN link.
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        // `millions bench`: a load generator on SwiftNIO, HDR histograms, the journey.
        .target(
            name: "Bench",
            dependencies: [
                "Cluster",
                "DataTier",
                "CacheTier",
                .product(name: "Histogram", package: "hdrhistogram-swift"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                // The chaos run's witness writes to each database node directly.
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "millions",
            dependencies: [
                "WebTier",
                "Cluster",
                "Bench",
                "MessageQueue",
                "Imaging",
                "MillionsCore",
                "DataTier",
                "Observability",
                "RedisClient",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Configuration", package: "swift-configuration"),
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdBcrypt", package: "hummingbird-auth"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        // In-memory wiring and helpers shared by the tests.
        .target(
            name: "MillionsTesting",
            dependencies: [
                "WebTier",
                "Engines",
                "Cluster",
                "DataTier",
                "MillionsCore",
                .product(name: "Configuration", package: "swift-configuration"),
                .product(name: "HummingbirdTesting", package: "hummingbird"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "MillionsTests",
            dependencies: [
                "MillionsCore",
                "DataTier",
                "SessionTier",
                "CacheTier",
                "RedisClient",
                "MessageQueue",
                "Imaging",
                "Photos",
                "Cluster",
                "Bench",
                "Edge",
                "WebTier",
                "Engines",
                "Observability",
                "MillionsTesting",
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdTesting", package: "hummingbird"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
    ]
)
