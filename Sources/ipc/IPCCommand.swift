import ArgumentParser
import Interprocess

@main
struct IPCCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ipc",
        abstract: "Typed Go-style channels between processes, over Unix sockets and TCP.",
        discussion: "Endpoints: \(Endpoint.acceptedForms).",
        subcommands: [Send.self, Receive.self, Demo.self, Bench.self, BenchReportCommand.self, BenchLocal.self, BenchCodec.self, DemoPeer.self, BenchPeer.self]
    )
}

/// How the CLI encodes messages.
enum CLICodec: String, ExpressibleByArgument, CaseIterable {
    /// Framed protocol, each message a UTF-8 string.
    case text
    /// Framed protocol, each message a JSON value.
    case json
    /// Framed protocol, bytes as they come.
    case raw
    /// No handshake, no framing: newline-delimited text.
    case lines

    static var help: ArgumentHelp {
        ArgumentHelp(
            "Message format: text (framed UTF-8 strings), json (framed JSON values), raw (framed bytes as they come), lines (plain newline-delimited text, no handshake: talks to nc and other line-based programs).")
    }
}

/// Parses an endpoint argument for argument-parser (`@Argument(transform:)`), so that a bad one is reported, with
/// what is wrong with it, before the command starts.
func parseEndpoint(_ text: String) throws -> Endpoint {
    do {
        return try Endpoint(parsing: text)
    } catch {
        throw ValidationError(error.message)
    }
}

/// Prints an error as one line and exits non-zero.
func fail(_ error: any Error) -> Never {
    let text = (error as? IPCError).map { "\($0.code): \($0.message)" } ?? "\(error)"
    FileHandleLite.standardError.write("ipc: error: \(text)\n")
    exitProcess(1)
}
