// swift-tools-version: 6.1
// Allocation budgets of the per-message paths (ordo-one/benchmark with its malloc counters). A package of its
// own, so that users of Interprocess never resolve the benchmark's dependencies. Run from this directory:
//   swift package benchmark                      (every benchmark, all its metrics)
//   swift package benchmark thresholds check     (against the budgets in Thresholds/; CI runs this)
import PackageDescription

let package = Package(
    name: "InterprocessBenchmarks",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(name: "Interprocess", path: ".."),
        .package(url: "https://github.com/ordo-one/benchmark", from: "1.38.1", traits: ["MallocInterposer"]),
    ],
    targets: [
        .executableTarget(
            name: "Allocations",
            dependencies: [
                .product(name: "Interprocess", package: "Interprocess"),
                .product(name: "Benchmark", package: "benchmark"),
            ],
            path: "Benchmarks/Allocations",
            swiftSettings: [.swiftLanguageMode(.v6)],
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
    ]
)
