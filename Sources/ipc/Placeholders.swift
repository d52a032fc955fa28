import ArgumentParser
struct Demo: AsyncParsableCommand { func run() async throws {} }
struct Bench: AsyncParsableCommand { func run() async throws {} }
struct DemoPeer: AsyncParsableCommand { static let configuration = CommandConfiguration(commandName: "demo-peer", shouldDisplay: false); func run() async throws {} }
struct BenchPeer: AsyncParsableCommand { static let configuration = CommandConfiguration(commandName: "bench-peer", shouldDisplay: false); func run() async throws {} }
