import ArgumentParser
import Foundation

/// `ipc bench-report`: the markdown table of docs/performance.md, from the files `ipc bench --json` wrote (one
/// per placement): one row per line and workload, one column group per placement.
struct BenchReportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench-report",
        abstract: "Print the markdown table of docs/performance.md (or, with --html, write the HTML page) from files written by `ipc bench --json`.")

    @Argument(help: "JSON files from `ipc bench --json`, one per placement.") var files: [String]
    @Option(help: "Write the HTML page of `ipc bench --report` for these files (one section per placement) to this file instead.") var html: String?

    func run() throws {
        let reports = try files.map { try JSONDecoder().decode(BenchReport.self, from: Data(contentsOf: URL(fileURLWithPath: $0))) }
        guard let first = reports.first else { throw ValidationError("give at least one file") }
        if let html {
            try Data(HTMLReport(reports: reports).render().utf8).write(to: URL(fileURLWithPath: html))
            return
        }
        print("Machine: \(first.machine). " + reports.map { "Placement \($0.placement.rawValue): \($0.date), \($0.runs) runs per line\($0.counts.quick ? ", QUICK counts" : "")." }.joined(separator: " "))
        let workloads = Workload.allCases.filter { w in reports.contains { $0.lines.contains { $0.workload == w.rawValue } } }
        for workload in workloads {
            print("\n| \(workload.rawValue.uppercased()) (\(workload.unit)) | " + reports.map { "\($0.placement.rawValue) | vs limit (best) | vs peer" }.joined(separator: " | ") + " |")
            print("|---|" + reports.map { _ in "---:|---:|---:" }.joined(separator: "|") + "|")
            var transports: [String] = []
            for report in reports {
                for line in report.lines where line.workload == workload.rawValue && !transports.contains(line.transport) {
                    transports.append(line.transport)
                }
            }
            for transport in transports {
                let label = reports.lazy.compactMap { $0.lines.first { $0.workload == workload.rawValue && $0.transport == transport }?.label }.first ?? transport
                var row = "| \(label) |"
                for report in reports {
                    guard let line = report.lines.first(where: { $0.workload == workload.rawValue && $0.transport == transport }) else {
                        row += " | | |"
                        continue
                    }
                    let figure = workload == .w4 ? line.median.map { Self.number($0) }.joined(separator: " / ") : Self.number(line.median[0])
                    let isLimit = line.limit == nil && line.peer == nil && (transport == "baseline" || transport == "c-shm-ring")
                    row += " \(figure)\(isLimit ? " (best \(Self.number(line.best)))" : "") |"
                    row += " \(line.ratioToLimit.map { String(format: "%.2fx", $0) } ?? "") |"
                    row += " \(line.ratioToPeer.map { String(format: "%.2fx", $0) } ?? "") |"
                }
                print(row)
            }
        }
    }

    private static func number(_ value: Double) -> String { HTMLReport.number(value) }
}
