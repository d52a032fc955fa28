import Foundation

/// The page of `ipc bench --report` and `ipc bench-report --html`: one self-contained HTML file (inline SVG and
/// CSS, no script, nothing fetched) with, per placement, W4 latency against message size (log-log), the W1
/// latency distributions, W2 and W3 bars beside the limits and peer libraries of the same run, a table of every
/// line, and a verdict computed from those numbers.
struct HTMLReport {
    var reports: [BenchReport]

    func render() -> String {
        var html = """
            <!doctype html>
            <html lang="en"><head><meta charset="utf-8">
            <title>Interprocess benchmark</title>
            <style>
            body { font: 15px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 1000px; color: #222; background: #fff; }
            h1 { font-size: 24px; } h2 { font-size: 20px; margin-top: 36px; border-bottom: 1px solid #ccc; } h3 { font-size: 16px; margin-top: 24px; }
            table { border-collapse: collapse; font-size: 13px; } td, th { padding: 2px 8px; border-bottom: 1px solid #eee; text-align: right; }
            td:nth-child(-n+2), th:nth-child(-n+2) { text-align: left; } .note { color: #666; font-size: 13px; }
            svg text { font: 12px system-ui, sans-serif; fill: #333; }
            </style></head><body>
            <h1>Interprocess benchmark</h1>

            """
        guard let first = reports.first else { return html + "<p>No results.</p></body></html>\n" }
        html += "<p>Machine: \(escape(first.machine)).<br>"
        html += reports.map { report in
            "Placement <b>\(report.placement.rawValue)</b>: \(escape(report.date)), \(report.runs) run\(report.runs == 1 ? "" : "s") per line (median), channel capacity \(report.capacity)\(report.counts.quick ? ", <b>quick counts: do not quote these numbers</b>" : "")."
        }.joined(separator: "<br>")
        html += "</p>\n<p class=\"note\">\(escape(Self.placementNote))</p>\n"
        for report in reports {
            html += "<section class=\"placement\" data-placement=\"\(report.placement.rawValue)\">\n"
            html += "<h2>Placement \(report.placement.rawValue)</h2>\n"
            let verdict = Verdict(report).lines
            if !verdict.isEmpty {
                html += "<h3>Which transport for which job</h3>\n<ul class=\"verdict\">\n"
                html += verdict.map { "<li>\(escape($0))</li>\n" }.joined()
                html += "</ul>\n"
            }
            html += w4Chart(report) + w1Chart(report) + barChart(report, .w2) + barChart(report, .w3) + table(report)
            html += "</section>\n"
        }
        return html + "</body></html>\n"
    }

    static let placementNote = "split: the measuring process on CPU 0, its peer on CPU 1; same: both on CPU 0; free: wherever the system puts them. The limits are plain syscalls on a socketpair and the C shared-memory ring; ratios to a limit are taken against its best run."

    // MARK: Charts

    /// W4: the p50 round trip per message size, both axes logarithmic.
    private func w4Chart(_ report: BenchReport) -> String {
        let lines = report.lines.filter { $0.workload == "w4" && $0.median.count == w4Sizes.count }
        guard !lines.isEmpty else { return "" }
        let series = lines.map { line in
            Series(key: line.transport, label: line.label, points: zip(w4Sizes, line.median).map { (log10(Double($0)), log10($1)) }, dashed: false)
        }
        let x = Axis(title: "message size", range: (log10(Double(w4Sizes[0])), log10(Double(w4Sizes[w4Sizes.count - 1]))),
                     ticks: w4Sizes.map { (log10(Double($0)), sizeLabel($0)) })
        let y = Axis.logarithmic(title: "round trip p50 (µs)", values: lines.flatMap(\.median))
        return "<h3>W4: round-trip latency against message size</h3>\n"
            + lineChart(id: "w4-\(report.placement.rawValue)", x: x, y: y, series: series)
    }

    /// W1: the latency distribution of 64-byte round trips, on HdrHistogram's percentile axis (90%, 99%, 99.9%...
    /// equally spaced).
    private func w1Chart(_ report: BenchReport) -> String {
        let lines = report.lines.filter { $0.workload == "w1" && ($0.distribution?.count ?? 0) >= 2 }
        guard !lines.isEmpty else { return "" }
        // The last point (100%) sits where one sample in `count` is left, as HdrHistogram's plots put it.
        let count = Double(max(report.counts.w1Iterations, 10))
        let xMax = log10(count)
        func position(_ percentile: Double) -> Double { min(log10(1 / max(1 - percentile / 100, 1 / count)), xMax) }
        let series = lines.map { line in
            Series(key: line.transport, label: line.label + ((line.distribution?.count ?? 0) <= 2 ? " (p50 and p99 only)" : ""),
                   points: (line.distribution ?? []).map { (position($0[0]), log10(max($0[1], 0.001))) },
                   dashed: (line.distribution?.count ?? 0) <= 2)
        }
        var ticks: [(Double, String)] = [(0, "0%"), (log10(2), "50%")]
        for nines in 1...6 where Double(nines) <= xMax {
            ticks.append((Double(nines), (100 - 100 / pow(10, Double(nines))).formatted(.number.precision(.fractionLength(0...4))) + "%"))
        }
        let x = Axis(title: "percentile", range: (0, xMax), ticks: ticks)
        let y = Axis.logarithmic(title: "round trip (µs)", values: lines.flatMap { $0.distribution?.map { $0[1] } ?? [] })
        return "<h3>W1: distribution of 64-byte round trips</h3>\n"
            + lineChart(id: "w1-\(report.placement.rawValue)", x: x, y: y, series: series)
    }

    /// W2 or W3: one horizontal bar per line, limits and peer libraries included, longest is best.
    private func barChart(_ report: BenchReport, _ workload: Workload) -> String {
        let lines = report.lines.filter { $0.workload == workload.rawValue && !$0.median.isEmpty }
        guard !lines.isEmpty else { return "" }
        let title = workload == .w2 ? "W2: 64-byte messages one way (M msg/s)" : "W3: 1 MiB messages one way (GB/s)"
        let width = 960.0, labelWidth = 300.0, barHeight = 20.0, gap = 8.0
        let plotWidth = width - labelWidth - 190
        let top = max(lines.map { $0.median[0] }.max() ?? 1, 1e-9)
        let height = Double(lines.count) * (barHeight + gap) + gap
        var svg = "<svg class=\"chart bars\" id=\"\(workload.rawValue)-\(report.placement.rawValue)\" xmlns=\"http://www.w3.org/2000/svg\" width=\"\(Int(width))\" height=\"\(Int(height))\" viewBox=\"0 0 \(Int(width)) \(Int(height))\">\n"
        for (i, line) in lines.enumerated() {
            let y = gap + Double(i) * (barHeight + gap)
            let length = max(plotWidth * line.median[0] / top, 3)
            svg += "<text x=\"\(labelWidth - 8)\" y=\(attr(y + barHeight * 0.72)) text-anchor=\"end\">\(escape(line.label))</text>\n"
            svg += "<rect class=\"series\" data-series=\"\(escape(line.transport))\" data-value=\(attr(line.median[0])) x=\"\(labelWidth)\" y=\(attr(y)) width=\(attr(length)) height=\"\(barHeight)\" fill=\"\(Self.color(line.transport))\" fill-opacity=\"0.85\"/>\n"
            var label = HTMLReport.number(line.median[0])
            if let ratio = line.ratioToPeer, let peer = line.peer { label += " (\(String(format: "%.2f", ratio))x \(peer))" }
            svg += "<text x=\(attr(labelWidth + length + 6)) y=\(attr(y + barHeight * 0.72))>\(escape(label))</text>\n"
        }
        return "<h3>\(title)</h3>\n" + svg + "</svg>\n"
    }

    private struct Series {
        var key: String
        var label: String
        var points: [(Double, Double)]
        var dashed: Bool
    }

    private struct Axis {
        var title: String
        var range: (Double, Double)
        var ticks: [(Double, String)]

        /// A log10 axis over `values` (positive), ticks at the powers of ten (and at 2 and 5 when it spans less
        /// than two decades).
        static func logarithmic(title: String, values: [Double]) -> Axis {
            let positive = values.filter { $0 > 0 }
            var low = floor(log10(positive.min() ?? 1)), high = ceil(log10(positive.max() ?? 10))
            if high <= low { high = low + 1 }
            if high - low < 1.5 { low -= 0.5 }
            var ticks: [(Double, String)] = []
            for decade in Int(low.rounded(.down))...Int(high) {
                for step in high - low < 2 ? [1.0, 2, 5] : [1.0] {
                    let value = step * pow(10, Double(decade))
                    if log10(value) >= low - 1e-9 && log10(value) <= high + 1e-9 { ticks.append((log10(value), HTMLReport.number(value))) }
                }
            }
            return Axis(title: title, range: (low, high), ticks: ticks)
        }
    }

    /// A line chart of `series` (coordinates already on the axes' scales), with a legend below it.
    private func lineChart(id: String, x: Axis, y: Axis, series: [Series]) -> String {
        let width = 960.0, plotLeft = 70.0, plotTop = 16.0, plotWidth = 860.0, plotHeight = 360.0
        let legendTop = plotTop + plotHeight + 50
        let height = legendTop + Double(series.count) * 20 + 8
        func px(_ value: Double) -> Double { plotLeft + (value - x.range.0) / max(x.range.1 - x.range.0, 1e-9) * plotWidth }
        func py(_ value: Double) -> Double { plotTop + plotHeight - (value - y.range.0) / max(y.range.1 - y.range.0, 1e-9) * plotHeight }
        var svg = "<svg class=\"chart lines\" id=\"\(id)\" xmlns=\"http://www.w3.org/2000/svg\" width=\"\(Int(width))\" height=\"\(Int(height))\" viewBox=\"0 0 \(Int(width)) \(Int(height))\">\n"
        svg += "<rect x=\"\(plotLeft)\" y=\"\(plotTop)\" width=\"\(plotWidth)\" height=\"\(plotHeight)\" fill=\"none\" stroke=\"#999\"/>\n"
        for (value, label) in x.ticks {
            svg += "<line x1=\(attr(px(value))) x2=\(attr(px(value))) y1=\"\(plotTop)\" y2=\"\(plotTop + plotHeight)\" stroke=\"#e4e4e4\"/>"
            svg += "<text x=\(attr(px(value))) y=\"\(plotTop + plotHeight + 16)\" text-anchor=\"middle\">\(escape(label))</text>\n"
        }
        for (value, label) in y.ticks {
            svg += "<line x1=\"\(plotLeft)\" x2=\"\(plotLeft + plotWidth)\" y1=\(attr(py(value))) y2=\(attr(py(value))) stroke=\"#e4e4e4\"/>"
            svg += "<text x=\"\(plotLeft - 6)\" y=\(attr(py(value) + 4)) text-anchor=\"end\">\(escape(label))</text>\n"
        }
        svg += "<text x=\"\(plotLeft + plotWidth / 2)\" y=\"\(plotTop + plotHeight + 34)\" text-anchor=\"middle\">\(escape(x.title))</text>\n"
        svg += "<text transform=\"translate(14 \(plotTop + plotHeight / 2)) rotate(-90)\" text-anchor=\"middle\">\(escape(y.title))</text>\n"
        for (i, line) in series.enumerated() {
            let color = Self.color(line.key)
            let d = line.points.enumerated().map { k, p in "\(k == 0 ? "M" : "L")\(String(format: "%.1f", px(p.0))),\(String(format: "%.1f", py(p.1)))" }.joined(separator: " ")
            svg += "<g class=\"series\" data-series=\"\(escape(line.key))\" data-points=\"\(line.points.count)\">"
            svg += "<path d=\"\(d)\" fill=\"none\" stroke=\"\(color)\" stroke-width=\"2.5\"\(line.dashed ? " stroke-dasharray=\"6 4\"" : "")/>"
            for p in line.points { svg += "<circle cx=\(attr(px(p.0))) cy=\(attr(py(p.1))) r=\"3\" fill=\"\(color)\"/>" }
            svg += "</g>\n"
            let ly = legendTop + Double(i) * 20
            svg += "<line x1=\"\(plotLeft)\" x2=\"\(plotLeft + 28)\" y1=\(attr(ly)) y2=\(attr(ly)) stroke=\"\(color)\" stroke-width=\"3\"\(line.dashed ? " stroke-dasharray=\"6 4\"" : "")/>"
            svg += "<text x=\"\(plotLeft + 36)\" y=\(attr(ly + 4))>\(escape(line.label))</text>\n"
        }
        return svg + "</svg>\n"
    }

    /// Every line of the placement: the main figure, the ratios, and for W1 p99 and the largest.
    private func table(_ report: BenchReport) -> String {
        var html = "<h3>Every line</h3>\n<table><tr><th>workload</th><th>line</th><th>median</th><th>vs limit (best)</th><th>vs peer</th></tr>\n"
        for line in report.lines {
            let figure: String = switch line.workload {
            case "w1": line.median.map(HTMLReport.number).joined(separator: " / ") + " µs (p50 / p99 / max)"
            case "w4": line.median.map(HTMLReport.number).joined(separator: " / ") + " µs"
            default: (line.median.first.map(HTMLReport.number) ?? "") + " " + line.unit
            }
            html += "<tr><td>\(line.workload.uppercased())</td><td>\(escape(line.label))</td><td>\(escape(figure))</td>"
            html += "<td>\(line.ratioToLimit.map { String(format: "%.2fx", $0) } ?? "")</td><td>\(line.ratioToPeer.map { String(format: "%.2fx", $0) } ?? "")</td></tr>\n"
        }
        return html + "</table>\n"
    }

    /// One colour per line, the same in every chart.
    static func color(_ transport: String) -> String {
        switch transport {
        case "baseline": "#8c564b"
        case "c-shm-ring": "#bcbd22"
        case "unix-raw": "#1f77b4"
        case "tcp-raw": "#ff7f0e"
        case "shm-raw": "#2ca02c"
        case "shm-zero-copy": "#d62728"
        case "unix-zero-copy": "#9467bd"
        case "unix-binary": "#17becf"
        case "unix-json": "#e377c2"
        case "unix-batch": "#393b79"
        case "shm-batch": "#637939"
        case "boost-mq": "#843c39"
        case "zmq-ipc": "#7b4173"
        case "zmq-tcp": "#e7ba52"
        default: "#555555"
        }
    }

    static func number(_ value: Double) -> String {
        value >= 100 ? String(format: "%.0f", value) : value >= 10 ? String(format: "%.1f", value) : value >= 0.1 ? String(format: "%.2f", value) : String(format: "%.3g", value)
    }

    private func attr(_ value: Double) -> String { "\"" + String(format: "%.1f", value) + "\"" }

    private func escape(_ text: String) -> String {
        text.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
            .replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "\"", with: "&quot;")
    }
}

/// "Which transport for which job", computed from one placement's lines: only what the numbers of this run show.
struct Verdict {
    var lines: [String] = []

    init(_ report: BenchReport) {
        func main(_ workload: String, _ transport: String) -> Double? {
            report.lines.first { $0.workload == workload && $0.transport == transport }?.median.first
        }
        func ours(_ workload: String) -> [BenchLine] {
            report.lines.filter { $0.workload == workload && $0.label.hasPrefix("Interprocess") && !$0.median.isEmpty }
        }
        let n = HTMLReport.number
        func times(_ a: Double, _ b: Double) -> String { String(format: "%.1fx", a / b) }

        // Small messages, latency.
        let w1 = ours("w1").sorted { $0.median[0] < $1.median[0] }
        if let best = w1.first {
            var text = "Lowest latency for small messages (W1, 64-byte round trip p50): \(best.label), \(n(best.median[0])) µs"
            if let socket = w1.first(where: { $0.transport.hasPrefix("unix") || $0.transport.hasPrefix("tcp") }), socket.transport != best.transport {
                text += ", \(times(socket.median[0], best.median[0])) less than the best socket line (\(socket.label), \(n(socket.median[0])) µs)"
            }
            if let p99 = best.median.dropFirst().first { text += "; its p99 is \(n(p99)) µs" }
            if let ratio = best.ratioToLimit, let limit = best.limit { text += "; \(String(format: "%.2f", ratio))x the best run of \(Self.peerName(limit))" }
            lines.append(text + ".")
        }
        // Small messages, rate, one per call.
        let w2 = ours("w2").filter { !$0.transport.hasSuffix("batch") }.sorted { $0.median[0] > $1.median[0] }
        if let best = w2.first {
            var text = "Most small messages per second, one per call (W2): \(best.label), \(n(best.median[0])) M msg/s"
            if let ratio = best.ratioToPeer, let peer = best.peer { text += ", \(String(format: "%.2f", ratio))x \(Self.peerName(peer))" }
            if let ratio = best.ratioToLimit, let limit = best.limit { text += ", \(String(format: "%.2f", ratio))x the best run of \(Self.peerName(limit))" }
            if let batch = ours("w2").filter({ $0.transport.hasSuffix("batch") }).max(by: { $0.median[0] < $1.median[0] }) {
                text += "; sending in batches (\(batch.label)) reaches \(n(batch.median[0])) M msg/s"
            }
            lines.append(text + ".")
        }
        // Typed messages.
        for (transport, name) in [("unix-binary", "binary Codable"), ("unix-json", "JSON Codable")] {
            if let typed = main("w2", transport), let raw = main("w2", "unix-raw") {
                lines.append("Typed messages cost their codec: \(name) over a Unix socket moves \(n(typed)) M msg/s, \(times(raw, typed)) fewer than raw bytes.")
            }
        }
        // Bulk.
        if let best = ours("w3").max(by: { $0.median[0] < $1.median[0] }) {
            var text = "Bulk data (W3, 1 MiB messages): \(best.label), \(n(best.median[0])) GB/s"
            if let socket = ours("w3").filter({ $0.transport.hasPrefix("unix") }).max(by: { $0.median[0] < $1.median[0] }), socket.transport != best.transport {
                text += ", \(times(best.median[0], socket.median[0])) a Unix socket's \(n(socket.median[0]))"
            }
            lines.append(text + ".")
        }
        // Where shared memory pays off, by size.
        let w4 = ours("w4").filter { $0.median.count == w4Sizes.count }
        if let socket = w4.first(where: { $0.transport == "unix-raw" }) ?? w4.first(where: { $0.transport.hasPrefix("unix") }),
            let shm = w4.filter({ $0.transport.hasPrefix("shm") }).min(by: { $0.median.last! < $1.median.last! })
        {
            let faster = w4Sizes.indices.filter { shm.median[$0] < socket.median[$0] }
            let sizes = faster.count == w4Sizes.count ? "at every size measured" : faster.isEmpty ? "at no size measured" : "at " + faster.map { sizeLabel(w4Sizes[$0]) }.joined(separator: ", ")
            lines.append("Where shared memory pays off (W4): \(shm.label) has a shorter round trip than \(socket.label) \(sizes): \(times(socket.median[0], shm.median[0])) at 64 B, \(times(socket.median[w4Sizes.count - 1], shm.median[w4Sizes.count - 1])) at 4 MiB (\(n(shm.median[w4Sizes.count - 1])) against \(n(socket.median[w4Sizes.count - 1])) µs).")
        }
        // Across hosts.
        if let tcp = main("w1", "tcp-raw"), let unix = main("w1", "unix-raw") {
            var text = "Across hosts only TCP goes; on one host it costs \(times(tcp, unix)) a Unix socket's round trip (\(n(tcp)) against \(n(unix)) µs)"
            if let tcpRate = main("w2", "tcp-raw"), let unixRate = main("w2", "unix-raw") { text += " and moves \(n(tcpRate)) against \(n(unixRate)) M msg/s" }
            lines.append(text + ": on one host, prefer a Unix socket or shared memory.")
        }
        // Against the peer libraries, line by line.
        for line in report.lines where line.label.hasPrefix("Interprocess") && line.ratioToPeer != nil && (line.workload == "w1" || line.workload == "w2") {
            guard let ratio = line.ratioToPeer, let peer = line.peer else { continue }
            let better = line.workload == "w1" ? ratio < 1 : ratio > 1
            let factor = line.workload == "w1" ? 1 / ratio : ratio
            lines.append("\(line.workload.uppercased()) \(line.label) against \(Self.peerName(peer)): \(better ? "\(String(format: "%.2f", factor))x faster" : "\(String(format: "%.2f", 1 / factor))x slower").")
        }
    }

    static func peerName(_ transport: String) -> String {
        BenchTransport(rawValue: transport)?.label ?? transport
    }
}
