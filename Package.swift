// swift-tools-version: 6.1
import PackageDescription

let swiftSettings: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("MemberImportVisibility"),
]

let package = Package(
    name: "Interprocess",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "Interprocess", targets: ["Interprocess"]),
        // `ByteBuffer` messages, for SwiftNIO users (pulls in swift-nio's NIOCore).
        .library(name: "InterprocessNIO", targets: ["InterprocessNIO"]),
        .executable(name: "ipc", targets: ["ipc"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-async-algorithms", from: "1.1.4"),
        .package(url: "https://github.com/apple/swift-collections", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-distributed-tracing", from: "1.7.3"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.2.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        // `swift package generate-documentation`: the DocC catalogue, built in CI with warnings as errors.
        .package(url: "https://github.com/swiftlang/swift-docc-plugin", from: "1.5.0"),
        .package(url: "https://github.com/x-sheep/swift-property-based", from: "2.0.1"),
    ],
    targets: [
        // Every syscall Swift cannot reach directly (futex, CMSG, SO_PEERCRED, accept4, pause).
        .target(name: "CInterprocessShim"),
        // The little every waiting layer needs from the system: a monotonic clock, the spin hint, yielding, and
        // the one spin policy.
        .target(name: "InterprocessPlatform", dependencies: ["CInterprocessShim"], swiftSettings: swiftSettings),
        // Channel semantics, the wire protocol's state machine, codecs and select. Makes no system calls.
        .target(
            name: "InterprocessCore",
            dependencies: [
                "InterprocessPlatform",
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                // A message may carry its sender's ServiceContext (ChannelOptions.tracing).
                .product(name: "Instrumentation", package: "swift-distributed-tracing"),
            ],
            swiftSettings: swiftSettings
        ),
        // What every transport shares: the process's one I/O thread (epoll), system-call wrappers that map errno
        // to IPCError, descriptor ownership.
        .target(
            name: "InterprocessIO",
            dependencies: ["InterprocessCore", "InterprocessPlatform", "CInterprocessShim"],
            swiftSettings: swiftSettings
        ),
        // Transport: Unix domain sockets and TCP.
        .target(
            name: "InterprocessSockets",
            dependencies: ["InterprocessCore", "InterprocessIO", "InterprocessPlatform", "CInterprocessShim"],
            swiftSettings: swiftSettings
        ),
        // Transport: shared memory (a sealed memfd with one byte ring per direction, handed over a socket).
        .target(
            name: "InterprocessSharedMemory",
            dependencies: ["InterprocessCore", "InterprocessIO", "InterprocessPlatform", "CInterprocessShim"],
            swiftSettings: swiftSettings
        ),
        // What users import.
        .target(
            name: "Interprocess",
            dependencies: [
                "InterprocessCore", "InterprocessIO", "InterprocessPlatform", "InterprocessSockets", "InterprocessSharedMemory", "CInterprocessShim",
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "InterprocessNIO",
            dependencies: ["InterprocessCore", .product(name: "NIOCore", package: "swift-nio")],
            swiftSettings: swiftSettings
        ),
        // What the benchmark and the test helper need besides the public API: pinning to a CPU, spawning a child
        // with an inherited descriptor, peak memory, and the raw baselines (plain syscalls, a C ring).
        .target(
            name: "BenchmarkSupport",
            dependencies: ["CInterprocessShim", .product(name: "Instrumentation", package: "swift-distributed-tracing")],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "ipc",
            dependencies: [
                "Interprocess", "BenchmarkSupport",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                // Only for `ipc bench --metrics-cost`, which measures the library with a metrics backend.
                .product(name: "CoreMetrics", package: "swift-metrics"),
                // Only for `ipc bench-local`, which measures in-process channels beside AsyncChannel.
                .product(name: "AsyncAlgorithms", package: "swift-async-algorithms"),
                // Latency percentiles and the W1 distributions of `ipc bench --report`.
                .product(name: "Histogram", package: "hdrhistogram-swift"),
            ],
            swiftSettings: swiftSettings
        ),
        // Spawned by the tests: the other process of every cross-process test.
        .executableTarget(
            name: "ipc-test-helper",
            dependencies: [
                "Interprocess", "BenchmarkSupport", .product(name: "Logging", package: "swift-log"),
                .product(name: "Instrumentation", package: "swift-distributed-tracing"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // The fuzz targets: every entry point that decodes untrusted bytes. Built with `-sanitize=fuzzer -DFUZZING`
        // for libFuzzer (`.ci/run`); otherwise it replays input files (the tests replay the committed corpus). A
        // test tool, so it uses the core's package interface like the tests do.
        .executableTarget(
            name: "ipc-fuzz",
            dependencies: ["InterprocessCore", "InterprocessSharedMemory"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "InterprocessTests",
            dependencies: [
                "Interprocess", "InterprocessCore", "InterprocessPlatform", "InterprocessIO", "InterprocessSockets",
                "InterprocessSharedMemory", "InterprocessNIO", "BenchmarkSupport", "CInterprocessShim", "ipc-test-helper", "ipc", "ipc-fuzz",
                .product(name: "PropertyBased", package: "swift-property-based"),
                .product(name: "MetricsTestKit", package: "swift-metrics"),
                .product(name: "Instrumentation", package: "swift-distributed-tracing"),
            ],
            swiftSettings: swiftSettings
        ),
    ],
    swiftLanguageModes: [.v6]
)
