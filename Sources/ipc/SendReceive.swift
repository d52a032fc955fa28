#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import Foundation
import Interprocess

/// The CLI's JSON mode: each message is one JSON value, carried as its text. Checked on both ends.
struct JSONTextCodec: MessageCodec {
    let typeName: String
    var name: String { "json" }

    static func check(_ text: String) throws -> Void {
        _ = try JSONSerialization.jsonObject(with: Data(text.utf8), options: [.fragmentsAllowed])
    }

    func encode(_ value: String, into buffer: inout [UInt8]) throws(IPCError) {
        buffer.append(contentsOf: value.utf8)
    }

    func decode(_ bytes: [UInt8]) throws(IPCError) -> String {
        let text = String(decoding: bytes, as: UTF8.self)
        do {
            try Self.check(text)
        } catch {
            throw IPCError(.decodingFailed, "a message is not valid JSON: \(text.prefix(60))", underlying: "\(error)")
        }
        return text
    }
}

struct Receive: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Receive messages and print each on its own line.",
        discussion: "Listens on ENDPOINT and accepts one connection (or dials it with --connect). Exits after --count messages or when the peer closes.")

    @Argument(help: "Where to listen (or dial): \(Endpoint.acceptedForms).", transform: parseEndpoint) var endpoint: Endpoint
    @Flag(help: "Dial the endpoint instead of listening on it.") var connect = false
    @Option(help: CLICodec.help) var codec: CLICodec = .text
    @Option(help: "Exit after this many messages.") var count: Int?
    @Option(name: .customLong("type"), help: "Element type name announced in json mode (must match the sender's).") var typeName = "json"
    @Flag(name: .customLong("json"), help: "Machine-readable output: one JSON object per line, {\"message\": ...} for each message (the text as a string, a json message as its value, raw bytes as {\"base64\": ...}), and {\"error\": {\"code\", \"message\", \"messagesInDoubt\"}} if the channel fails.") var jsonOutput = false
    @OptionGroup var resume: ResumeOptions

    func run() async throws {
        if let count, count < 0 { throw ValidationError("--count must be 0 or more") }
        do {
            switch codec {
            case .text: try await receive(endpoint, StringCodec()) { output(text: $0) }
            case .lines: try await receive(endpoint, LinesCodec()) { output(text: $0) }
            case .json: try await receive(endpoint, JSONTextCodec(typeName: typeName)) { jsonOutput ? print("{\"message\":\($0)}") : print($0) }
            case .raw:
                try await receive(endpoint, RawBytesCodec()) { bytes in
                    if jsonOutput {
                        print("{\"message\":{\"base64\":\"\(Data(bytes).base64EncodedString())\"}}")
                    } else {
                        FileHandleLite.standardOutput.write(bytes: bytes)
                    }
                }
            }
        } catch let error as IPCError {
            if jsonOutput {
                var fields: [String: Any] = ["code": "\(error.code)", "message": error.message]
                if let inDoubt = error.messagesInDoubt { fields["messagesInDoubt"] = inDoubt }
                print(Self.jsonLine(["error": fields]))
                fflush(nil)
            }
            fail(error)
        }
    }

    /// A text message as the user sees it: its own line, or with `--json` a JSON object.
    private func output(text: String) {
        print(jsonOutput ? Self.jsonLine(["message": text]) : text)
    }

    /// One line of JSON for `object` (keys sorted, so that the output is stable).
    private static func jsonLine(_ object: [String: Any]) -> String {
        let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])) ?? Data("{}".utf8)
        return String(decoding: data, as: UTF8.self)
    }

    private func receive<C: MessageCodec>(_ endpoint: Endpoint, _ codec: C, _ output: (C.Value) -> Void) async throws {
        let receiver: Receiver<C.Value>
        let options = resume.channelOptions
        // A resumable connection's listener stays open: the client comes back to it after a break.
        var listener: Listener<NoMessages, C>?
        defer { listener?.close() }
        if connect {
            receiver = try await IPC.connect(to: endpoint, receiving: codec, options: options)
        } else {
            listener = try IPC.listen(on: endpoint, receiving: codec, options: options)
            receiver = try await listener!.accept().receiver
            if options.resume == nil { listener?.close() }
        }
        var received = 0
        if count == 0 { return }
        while let message = try await receiver.receive() {
            output(message)
            received += 1
            if let count, received >= count { break }
        }
        fflush(nil)
    }
}

struct Send: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Send each MESSAGE (or each line of standard input), then close.",
        discussion: "Dials ENDPOINT (or listens on it and accepts one connection with --listen). With --codec raw and no MESSAGE, standard input is sent as it comes, in chunks of up to 64 KiB.")

    @Argument(help: "Where to dial (or listen): \(Endpoint.acceptedForms).", transform: parseEndpoint) var endpoint: Endpoint
    @Argument(help: "Messages to send; when none are given, each line of standard input is one message.") var messages: [String] = []
    @Flag(help: "Listen on the endpoint and accept one connection instead of dialling.") var listen = false
    @Option(help: CLICodec.help) var codec: CLICodec = .text
    @Option(name: .customLong("type"), help: "Element type name announced in json mode (must match the receiver's).") var typeName = "json"
    @OptionGroup var resume: ResumeOptions

    func run() async throws {
        do {
            switch codec {
            case .text: try await send(endpoint, StringCodec(), lines(), transform: { $0 })
            case .lines: try await send(endpoint, LinesCodec(), lines(), transform: { $0 })
            case .json:
                var number = 0
                try await send(endpoint, JSONTextCodec(typeName: typeName), lines()) { line in
                    number += 1
                    do {
                        try JSONTextCodec.check(line)
                    } catch {
                        // Exit without closing the channel: the receiver must see an abnormal end, not a clean one.
                        let which = messages.isEmpty ? "line \(number) of standard input" : "message \(number)"
                        fail(ValidationFailure(text: "\(which) is not valid JSON, nothing more was sent: \(line.prefix(60))"))
                    }
                    return line
                }
            case .raw:
                if messages.isEmpty {
                    try await send(endpoint, RawBytesCodec(), stdinChunks(), transform: { $0 })
                } else {
                    try await send(endpoint, RawBytesCodec(), AnyIterator(messages.map { Array($0.utf8) }.makeIterator()), transform: { $0 })
                }
            }
        } catch let error as IPCError {
            fail(error)
        } catch let error as ValidationFailure {
            fail(error)
        }
    }

    private func lines() -> AnyIterator<String> {
        if !messages.isEmpty { return AnyIterator(messages.makeIterator()) }
        return AnyIterator { readLine(strippingNewline: true) }
    }

    private func stdinChunks() -> AnyIterator<[UInt8]> {
        AnyIterator {
            var buffer = [UInt8](repeating: 0, count: 64 << 10)
            while true {
                let n = buffer.withUnsafeMutableBytes { Glibc.read(0, $0.baseAddress, $0.count) }
                if n < 0 && errno == EINTR { continue }
                guard n > 0 else { return nil }
                return Array(buffer[0..<n])
            }
        }
    }

    private func send<C: MessageCodec, S>(_ endpoint: Endpoint, _ codec: C, _ source: AnyIterator<S>, transform: (S) throws -> C.Value) async throws {
        let sender: Sender<C.Value>
        let options = resume.channelOptions
        // A resumable connection's listener stays open: the client comes back to it after a break.
        var listener: Listener<C, NoMessages>?
        defer { listener?.close() }
        if listen {
            listener = try IPC.listen(on: endpoint, sending: codec, options: options)
            sender = try await listener!.accept().sender
            if options.resume == nil { listener?.close() }
        } else {
            sender = try await IPC.connect(to: endpoint, sending: codec, options: options)
        }
        while let item = source.next() {
            try await sender.send(try transform(item))
        }
        try await sender.closeAndWait()
    }
}

struct ValidationFailure: Error, CustomStringConvertible {
    let text: String
    var description: String { text }
}

/// `ipc send` and `ipc receive` resume a broken connection by default (ChannelOptions.resume).
struct ResumeOptions: ParsableArguments {
    @Flag(help: "Fail at once when the connection breaks, instead of resuming it (by default a Unix-socket or TCP connection that breaks is resumed, and nothing sent is lost or repeated, if both sides offer it).") var noResume = false
    @Option(help: "How long a broken connection may take to resume before the command fails, in seconds.") var resumeDeadline: Int = 30

    var channelOptions: ChannelOptions {
        var options = ChannelOptions()
        if !noResume { options.resume = ResumePolicy(deadline: .seconds(max(resumeDeadline, 1))) }
        return options
    }
}
