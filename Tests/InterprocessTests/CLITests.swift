import Foundation
import Interprocess
import Testing

/// The `ipc` tool in every mode, as a separate process, against the library or a foreign program.
@Suite("ipc command-line tool", .serialized, .timeLimit(.minutes(2)))
struct CLITests {
    @Test("send: framed UTF-8 strings", arguments: TransportKind.allCases)
    func sendText(_ kind: TransportKind) async throws {
        let listener = try IPC.listen(on: kind.endpoint(in: temporaryDirectory()), receiving: .utf8)
        defer { listener.close() }
        let cli = try ChildProcess("ipc", ["send", listener.endpoint.description, "Hello from process 1!", "two words"])
        let rx = try await within(10) { try await listener.accept() }.receiver
        #expect(try await within(10) { try await rx.receive() } == "Hello from process 1!")
        #expect(try await within(10) { try await rx.receive() } == "two words")
        #expect(try await within(10) { try await rx.receive() } == nil)
        #expect(await cli.finish().status == 0)
    }

    @Test("send: stdin lines when no message is given")
    func sendStdin() async throws {
        let listener = try IPC.listen(on: .unix(path: temporaryDirectory() + "/c.sock"), receiving: .utf8)
        defer { listener.close() }
        let cli = try ChildProcess("ipc", ["send", listener.endpoint.description])
        cli.write(Array("first\nsecond\n".utf8))
        cli.closeInput()
        let rx = try await within(10) { try await listener.accept() }.receiver
        var got: [String] = []
        while let m = try await within(10, { try await rx.receive() }) { got.append(m) }
        #expect(got == ["first", "second"])
        #expect(await cli.finish().status == 0)
    }

    /// `ipc send` and `ipc receive` resume a broken connection by default: lines sent through a proxy that cuts
    /// every connection at a random byte arrive once each, in order.
    @Test("send and receive resume through cuts: every line once, in order")
    func sendReceiveResumeThroughCuts() async throws {
        let path = temporaryDirectory() + "/r.sock"
        let receive = try ChildProcess("ipc", ["receive", "unix:" + path])
        #expect(try await within(20) { () async -> Bool in
            while access(path, F_OK) != 0 { try? await Task.sleep(for: .milliseconds(5)) }
            return true
        })
        let proxy = try CuttingProxy(target: .unix(path: path)) { Int.random(in: 500...20_000) }
        defer { proxy.close() }
        let count = scaledCount(100_000)
        let send = try ChildProcess("ipc", ["send", proxy.endpoint.description])
        // The lines are more than a pipe holds: written from a thread of their own, since the write blocks until
        // the child has read them (on one of the test process's few task threads, it held up every other test).
        let input = Array((0..<count).map { "line \($0)\n" }.joined().utf8)
        Thread {
            send.write(input)
            send.closeInput()
        }.start()
        let (sendStatus, sendOutput) = await send.finish(within: 120)
        let (status, output) = await receive.finish(within: 120)
        #expect(sendStatus == 0, "send said: \(sendOutput.suffix(300))")
        #expect(status == 0, "receive said: \(output.suffix(300))")
        let lines = output.split(separator: "\n")
        #expect(lines.count == count)
        #expect(lines.enumerated().allSatisfy { $0.element == "line \($0.offset)" }, "lines missing, repeated or out of order")
        #expect(proxy.connections > 10, "only \(proxy.connections - 1) cuts")
    }

    @Test("receive --connect prints each message on its own line and exits at the end")
    func receiveText() async throws {
        let listener = try IPC.listen(on: .unix(path: temporaryDirectory() + "/r.sock"), sending: .utf8)
        defer { listener.close() }
        let cli = try ChildProcess("ipc", ["receive", "--connect", listener.endpoint.description])
        let tx = try await within(10) { try await listener.accept() }.sender
        try await tx.send("alpha")
        try await tx.send("beta")
        try await tx.close()
        let (status, output) = await cli.finish()
        #expect(status == 0)
        #expect(output == "alpha\nbeta\n")
    }

    @Test("receive --json prints one JSON object per message, and the error as one when the channel fails")
    func receiveJSONOutput() async throws {
        let listener = try IPC.listen(on: .unix(path: temporaryDirectory() + "/j.sock"), sending: .utf8)
        defer { listener.close() }
        let cli = try ChildProcess("ipc", ["receive", "--connect", "--json", listener.endpoint.description])
        let tx = try await within(10) { try await listener.accept() }.sender
        let sent = ["plain", "a \"quoted\" word\nand a second line", "unicode: é 漢字 \u{1F600}"]
        for text in sent { try await tx.send(text) }
        try await tx.close()
        let (status, output) = await cli.finish()
        #expect(status == 0, "receive said: \(output)")
        let lines = output.split(separator: "\n").map(String.init)
        #expect(lines.count == sent.count, "receive said: \(output)")
        for (line, text) in zip(lines, sent) {
            let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
            #expect(object?["message"] as? String == text, "line: \(line)")
        }
        // A sender killed mid-stream: raw messages come as base64, and the failure as a JSON object too.
        let flood = try ChildProcess.helper("listen-flood", .unix(path: temporaryDirectory() + "/k.sock"), 64)
        defer { flood.kill() }
        let endpoint = try await flood.listeningEndpoint()
        let failing = try ChildProcess("ipc", ["receive", "--connect", "--json", "--codec", "raw", endpoint.description])
        #expect(await failing.waitForOutput("base64"))
        flood.kill()
        let (status2, output2) = await failing.finish()
        #expect(status2 == 1, "receive said: \(output2)")
        let objects = output2.split(separator: "\n").filter { $0.hasPrefix("{") }.map {
            (try? JSONSerialization.jsonObject(with: Data($0.utf8))) as? [String: Any]
        }
        let first = (objects.first??["message"] as? [String: Any])?["base64"] as? String
        #expect(first.flatMap { Data(base64Encoded: $0) }?.count == 64, "receive said: \(output2.prefix(300))")
        let error = objects.last??["error"] as? [String: Any]
        #expect(error?["code"] as? String == "peerClosed", "receive said: \(output2.suffix(300))")
    }

    @Test("receive --count stops after N messages")
    func receiveCount() async throws {
        let listener = try IPC.listen(on: .unix(path: temporaryDirectory() + "/n.sock"), sending: .utf8)
        defer { listener.close() }
        let cli = try ChildProcess("ipc", ["receive", "--connect", "--count", "2", listener.endpoint.description])
        let tx = try await within(10) { try await listener.accept() }.sender
        for word in ["1", "2", "3"] { try await tx.send(word) }
        let (status, output) = await cli.finish()
        #expect(status == 0)
        #expect(output == "1\n2\n")
    }

    @Test("json mode carries JSON values and refuses invalid JSON with its position")
    func json() async throws {
        struct Point: Codable, Equatable { var x: Int }
        let listener = try IPC.listen(on: .unix(path: temporaryDirectory() + "/j.sock"), receiving: JSONCodec(Point.self, typeName: "json"))
        defer { listener.close() }
        let cli = try ChildProcess("ipc", ["send", "--codec", "json", listener.endpoint.description, "{\"x\": 3}", "{not json"])
        let rx = try await within(10) { try await listener.accept() }.receiver
        #expect(try await within(10) { try await rx.receive() } == Point(x: 3))
        await #expect(throws: IPCError.self) { _ = try await within(10) { try await rx.receive() } }
        let (status, output) = await cli.finish()
        #expect(status != 0)
        #expect(output.contains("message 2 is not valid JSON"), "ipc said: \(output)")
    }

    @Test("raw mode moves arbitrary bytes both ways")
    func raw() async throws {
        let bytes = (0..<200_000).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ ($0 >> 8)) }
        // stdin -> ipc send --codec raw -> library
        let inbound = try IPC.listen(on: .unix(path: temporaryDirectory() + "/in.sock"), receiving: .raw)
        defer { inbound.close() }
        let sender = try ChildProcess("ipc", ["send", "--codec", "raw", inbound.endpoint.description])
        sender.write(bytes)
        sender.closeInput()
        let rx = try await within(10) { try await inbound.accept() }.receiver
        var got: [UInt8] = []
        do {
            while let chunk = try await within(10, { try await rx.receive() }) { got += chunk }
        } catch {
            Issue.record("\(error); ipc send printed: \(await sender.finish(within: 5).output)")
        }
        #expect(got == bytes)
        let sent = await sender.finish()
        #expect(sent.status == 0, "\(sent.output)")
        // library -> ipc receive --codec raw -> stdout
        let outbound = try IPC.listen(on: .unix(path: temporaryDirectory() + "/out.sock"), sending: .raw)
        defer { outbound.close() }
        let receiver = try ChildProcess("ipc", ["receive", "--connect", "--codec", "raw", outbound.endpoint.description])
        let tx = try await within(10) { try await outbound.accept() }.sender
        try await tx.send(Array(bytes[0..<1000]))
        try await tx.send(Array(bytes[1000...]))
        try await tx.close()
        let (status, output) = await receiver.finishBytes()
        #expect(status == 0)
        #expect(output == bytes)
    }

    @Test("lines mode talks to a plain socket program with no framing")
    func linesWithForeignPeer() async throws {
        // A foreign program (Python) plays the article's Go sender: it listens, writes a bare string with no
        // newline, and closes.
        let script = """
            import socket, sys
            s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(1)
            print(s.getsockname()[1], flush=True)
            c, _ = s.accept(); c.sendall(b"Hello from process 1!"); c.close()
            """
        let python = Process()
        python.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        python.arguments = ["python3", "-c", script]
        let pipe = Pipe()
        python.standardOutput = pipe
        try python.run()
        defer { python.terminate() }
        var portText: [UInt8] = []
        while let b = pipe.fileHandleForReading.readData(ofLength: 1).first, b != UInt8(ascii: "\n") { portText.append(b) }
        let port = String(decoding: portText, as: UTF8.self)
        let cli = try ChildProcess("ipc", ["receive", "--connect", "--codec", "lines", "tcp://127.0.0.1:\(port)"])
        let (status, output) = await cli.finish()
        #expect(status == 0, "ipc said: \(output)")
        #expect(output == "Hello from process 1!\n")
    }

    @Test("lines mode: ipc send writes plain newline-terminated text")
    func linesSend() async throws {
        let listener = try IPC.listen(on: .unix(path: temporaryDirectory() + "/l.sock"), receiving: .lines)
        defer { listener.close() }
        let cli = try ChildProcess("ipc", ["send", "--codec", "lines", listener.endpoint.description, "one", "two"])
        let rx = try await within(10) { try await listener.accept() }.receiver
        #expect(try await within(10) { try await rx.receive() } == "one")
        #expect(try await within(10) { try await rx.receive() } == "two")
        #expect(try await within(10) { try await rx.receive() } == nil)
        #expect(await cli.finish().status == 0)
    }

    @Test("errors print one clear line and exit non-zero")
    func errors() async throws {
        // A bad endpoint is a usage error, found by the argument parser before anything starts.
        let bad = try ChildProcess("ipc", ["send", "bogus:endpoint", "x"])
        let (status, output) = await bad.finish()
        #expect(status == 64, "ipc said: \(output)")
        #expect(output.contains("invalid for '<endpoint>'"), "ipc said: \(output)")
        #expect(output.contains("unix:/path/to.sock"), "ipc said: \(output)")
        let refused = try ChildProcess("ipc", ["send", "unix:" + temporaryDirectory() + "/nobody.sock", "x"])
        let (status2, output2) = await refused.finish()
        #expect(status2 == 1)
        #expect(output2.hasPrefix("ipc: error: connectionRefused"), "ipc said: \(output2)")
        #expect(output2.split(separator: "\n").count == 1)
    }

    /// Progress goes to a terminal only: under `script` (a pseudo-terminal) the bench says which run it is on;
    /// with its output in a pipe it says nothing of the kind.
    @Test("bench shows progress on a terminal, and none in a pipe", .enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/script")))
    func benchProgress() async throws {
        let command = "\(buildDirectory)/ipc bench --quick --runs 2 --placement free --workloads w1 --transports unix-raw"
        let onTerminal = try ChildProcess(path: "/usr/bin/script", ["-qec", command, "/dev/null"])
        let (status, output) = await onTerminal.finish(within: 60)
        #expect(status == 0, "bench said: \(output)")
        #expect(output.contains("W1 unix-raw: run 1 of 2"), "bench said: \(output)")
        #expect(output.contains("run 2 of 2, about"), "bench said: \(output)")
        let inPipe = try ChildProcess("ipc", ["bench", "--quick", "--runs", "2", "--placement", "free", "--workloads", "w1", "--transports", "unix-raw"])
        let (status2, output2) = await inPipe.finish(within: 60)
        #expect(status2 == 0, "bench said: \(output2)")
        #expect(output2.contains("Interprocess unix, raw bytes"), "bench said: \(output2)")
        #expect(!output2.contains("run 1 of"), "bench said: \(output2)")
    }

    /// The page of `ipc bench --report`, opened in headless Chromium: the DOM holds every chart with a series per
    /// line, and in the screenshot each line's colour is drawn (strokes of the W1 and W4 charts, bars of W2 and W3).
    /// `.ci/run` installs Chromium and sets IPC_REQUIRE_CHROMIUM, so there a missing browser fails the test.
    @Test("bench --report writes a self-contained page whose charts render in headless Chromium",
          .enabled(if: chromium != nil || ProcessInfo.processInfo.environment["IPC_REQUIRE_CHROMIUM"] != nil))
    func benchReport() async throws {
        let browser = try #require(chromium, "IPC_REQUIRE_CHROMIUM is set and no chromium is on the PATH")
        let directory = temporaryDirectory()
        let page = directory + "/report.html"
        let transports = ["baseline", "unix-raw", "shm-raw"]
        let cli = try ChildProcess("ipc", ["bench", "--quick", "--runs", "1", "--placement", "free", "--transports"] + transports + ["--report", page])
        let (status, output) = await cli.finish(within: 90)
        #expect(status == 0, "bench said: \(output)")
        let html = try String(contentsOfFile: page, encoding: .utf8)
        // Self-contained: nothing is fetched (the one URL is the SVG namespace).
        #expect(!html.contains("<script") && !html.contains("<link") && !html.contains("<img"))
        #expect(html.replacingOccurrences(of: "xmlns=\"http://www.w3.org/2000/svg\"", with: "").range(of: "http") == nil)
        #expect(html.contains("Which transport for which job") && html.contains("Where shared memory pays off"))

        let flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--user-data-dir=\(directory)/profile"]
        let dump = try ChildProcess(path: browser, flags + ["--dump-dom", "file://\(page)"])
        let (dumpStatus, dom) = await dump.finish(within: 60)
        #expect(dumpStatus == 0, "chromium said: \(dom)")
        for chart in ["w1-free", "w2-free", "w3-free", "w4-free"] {
            let start = try #require(dom.range(of: "id=\"\(chart)\""), "no chart \(chart) in the DOM: \(dom.prefix(2000))")
            let svg = String(dom[start.upperBound...]).components(separatedBy: "</svg>")[0]
            for transport in transports {
                #expect(svg.contains("data-series=\"\(transport)\""), "chart \(chart) has no series \(transport)")
            }
        }

        let shot = directory + "/report.png"
        let screenshot = try ChildProcess(path: browser, flags + ["--window-size=1000,2600", "--screenshot=\(shot)", "file://\(page)"])
        let (shotStatus, shotOutput) = await screenshot.finish(within: 60)
        #expect(shotStatus == 0, "chromium said: \(shotOutput)")
        // Each line's colour as drawn (within 3 per channel: Chromium's colour conversion moves a channel by one):
        // as it is in the line charts' strokes, and blended with white at the bars' opacity 0.85.
        let colours = ["baseline": "~8c564b", "unix-raw": "~1f77b4", "shm-raw": "~2ca02c"]
        func blended(_ hex: String) -> String {
            "~" + stride(from: 1, to: 7, by: 2).map { i -> String in
                let channel = Double(Int(hex.dropFirst(i).prefix(2), radix: 16) ?? 0)
                return String(format: "%02x", Int((channel * 0.85 + 255 * 0.15).rounded()))
            }.joined()
        }
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("Tools/png_colors.py").path
        let count = try ChildProcess(path: "/usr/bin/env", ["python3", script, shot] + colours.values.flatMap { [$0, blended($0)] })
        let (countStatus, counted) = await count.finish(within: 60)
        #expect(countStatus == 0, "png_colors.py said: \(counted)")
        let pixels = Dictionary(counted.split(separator: "\n").compactMap { line -> (String, Int)? in
            let fields = line.split(separator: " ")
            return fields.count == 2 ? (String(fields[0]), Int(fields[1]) ?? 0) : nil
        }, uniquingKeysWith: { a, _ in a })
        #expect((pixels["nonwhite"] ?? 0) > 50_000, "the screenshot is nearly blank: \(counted)")
        for (transport, colour) in colours {
            #expect((pixels[colour] ?? 0) >= 200, "\(transport)'s lines were not drawn: \(counted)")
            #expect((pixels[blended(colour)] ?? 0) >= 40, "\(transport)'s bars were not drawn: \(counted)")
        }
    }

    @Test("demo: the article's two processes, over a Unix socket, TCP and shared memory")
    func demo() async throws {
        let cli = try ChildProcess("ipc", ["demo", "--round-trips", "200"])
        let (status, output) = await cli.finish(within: 60)
        #expect(status == 0, "demo said: \(output)")
        #expect(output.components(separatedBy: "received: Hello from process 1!").count == 4)
        #expect(output.components(separatedBy: "received: Hello from process 2!").count == 4)
        #expect(output.contains("shm:demo-"))
        #expect(output.contains("everything arrived"))
    }

    @Test("bench: W4 by size over the raw baseline, shared memory and the zero-copy calls, every echo checked")
    func benchW4() async throws {
        let cli = try ChildProcess("ipc", ["bench", "--quick", "--runs", "1", "--placement", "free", "--workloads", "w4",
                                           "--transports", "baseline", "shm-raw", "shm-zero-copy"])
        let (status, output) = await cli.finish(within: 90)
        #expect(status == 0, "bench said: \(output)")
        for transport in ["baseline", "shm-raw", "shm-zero-copy"] {
            let line = output.split(separator: "\n").first { $0.hasPrefix("RESULT w4 \(transport) ") }
            let values = line.map { $0.split(separator: " ").dropFirst(3).prefix(6).compactMap { Double($0) } } ?? []
            #expect(values.count == 6 && values.allSatisfy { $0 > 0 }, "no W4 result for \(transport): \(output)")
        }
    }

    @Test("bench-codec: each codec encodes and decodes the benchmark message, beside Foundation's JSON coders")
    func benchCodec() async throws {
        let cli = try ChildProcess("ipc", ["bench-codec", "--count", "2000", "--runs", "1"])
        let (status, output) = await cli.finish(within: 60)
        #expect(status == 0, "bench-codec said: \(output)")
        for codec in ["binary", "json", "foundation-json"] {
            let line = output.split(separator: "\n").first { $0.hasPrefix("RESULT codec \(codec) ") }
            let values = line.map { $0.split(separator: " ").dropFirst(3).compactMap { Double($0) } } ?? []
            #expect(values.count == 3 && values.allSatisfy { $0 > 0 }, "no result for \(codec): \(output)")
        }
    }

    @Test("bench: the peer libraries run beside the lines they are compared with, and --json writes every line")
    func benchPeersAndJSON() async throws {
        let directory = temporaryDirectory()
        let report = directory + "/bench.json"
        let cli = try ChildProcess("ipc", ["bench", "--quick", "--runs", "1", "--placement", "free", "--workloads", "w2",
                                           "--transports", "shm-raw", "unix-raw", "boost-mq", "zmq-ipc", "--json", report])
        let (status, output) = await cli.finish(within: 120)
        #expect(status == 0, "bench said: \(output)")
        struct Line: Decodable {
            var transport: String
            var median: [Double]
            var peer: String?
            var ratioToPeer: Double?
        }
        struct Report: Decodable {
            var placement: String
            var lines: [Line]
        }
        let data = try #require(FileManager.default.contents(atPath: report), "no JSON report: \(output)")
        let decoded = try JSONDecoder().decode(Report.self, from: data)
        #expect(decoded.placement == "free")
        let lines = Dictionary(decoded.lines.map { ($0.transport, $0) }, uniquingKeysWith: { a, _ in a })
        for transport in ["shm-raw", "unix-raw"] {
            #expect((lines[transport]?.median.first ?? 0) > 0, "no W2 figure for \(transport): \(output)")
        }
        // Each peer runs when g++ and its library are installed (.ci/run installs them); otherwise the bench says why.
        let peers = [("boost-mq", "shm-raw", "/usr/include/boost/interprocess/ipc/message_queue.hpp", "boost_mq.cpp"),
                     ("zmq-ipc", "unix-raw", "/usr/include/zmq.h", "zmq_pair.cpp")]
        let compiler = (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":")
            .contains { FileManager.default.isExecutableFile(atPath: "\($0)/g++") }
        for (peer, line, header, source) in peers {
            if compiler && FileManager.default.fileExists(atPath: header) {
                #expect((lines[peer]?.median.first ?? 0) > 0, "no W2 figure for \(peer): \(output)")
                #expect(lines[line]?.peer == peer && (lines[line]?.ratioToPeer ?? 0) > 0, "\(line) has no ratio to \(peer)")
            } else {
                #expect(lines[peer] == nil)
                #expect(output.contains("note: \(source) was not found or did not build"), "no note for \(peer): \(output)")
            }
        }
    }
}

/// Debian's Chromium, if installed.
let chromium: String? = ["/usr/bin/chromium", "/usr/bin/chromium-browser"].first { FileManager.default.isExecutableFile(atPath: $0) }
