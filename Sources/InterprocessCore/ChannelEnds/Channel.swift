/// In-process channels: Go's `make(chan T, n)`.
///
/// ```swift
/// let (jobs, inbox) = Channel<Job>.make(capacity: 16)
/// Task { for job in work { try await jobs.send(job) }; try await jobs.close() }
/// for try await job in inbox { handle(job) }
/// ```
///
/// The ends are the same ``Sender`` and ``Receiver`` types as for channels between processes, with the same
/// rules, so code written against an in-process channel runs unchanged over a socket. Values are passed as they
/// are (no codec, no copy).
public enum Channel<Value: Sendable> {
    /// A channel holding at most `capacity` values sent and not yet received; 0 makes every send a rendezvous
    /// with a receiver.
    public static func make(capacity: Int = 0) -> (sender: Sender<Value>, receiver: Receiver<Value>) {
        precondition(capacity >= 0, "a channel's capacity cannot be negative")
        let channel = LocalChannel<Value>(capacity: capacity)
        return (Sender(local: channel), Receiver(local: channel))
    }
}
