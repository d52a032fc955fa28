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
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
    ],
    targets: [
        // Every syscall Swift cannot reach directly (futex, CMSG, SO_PEERCRED, accept4, pause).
        .target(name: "CInterprocessShim"),
        // Channel semantics, wire protocol and codecs. No syscalls.
        .target(
            name: "InterprocessCore",
            dependencies: [
                "CInterprocessShim",
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        // Unix domain sockets and TCP: a lean non-blocking socket path with one epoll thread per process.
        .target(
            name: "InterprocessSockets",
            dependencies: ["InterprocessCore", "CInterprocessShim"],
            swiftSettings: swiftSettings
        ),
        // What users import.
        .target(
            name: "Interprocess",
            dependencies: ["InterprocessCore", "InterprocessSockets", "CInterprocessShim"],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "InterprocessNIO",
            dependencies: ["InterprocessCore", .product(name: "NIOCore", package: "swift-nio")],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "ipc",
            dependencies: [
                "Interprocess", "CInterprocessShim",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                // Only for `ipc bench-local`, which measures in-process channels beside AsyncChannel.
                .product(name: "AsyncAlgorithms", package: "swift-async-algorithms"),
            ],
            swiftSettings: swiftSettings
        ),
        // Spawned by the tests: the other process of every cross-process test.
        .executableTarget(
            name: "ipc-test-helper",
            dependencies: ["Interprocess", "CInterprocessShim"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "InterprocessTests",
            dependencies: ["Interprocess", "InterprocessCore", "InterprocessSockets", "InterprocessNIO", "CInterprocessShim", "ipc-test-helper", "ipc"],
            swiftSettings: swiftSettings
        ),
    ],
    swiftLanguageModes: [.v6]
)
