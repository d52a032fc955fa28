/// Who is using a stream's descriptors, so that they are released only once no read or write is in progress on
/// another thread (a descriptor number reused by the kernel must never be read or written by mistake).
/// A plain state machine; each stream keeps one inside its own locked state.
struct DescriptorUse {
    private(set) var users = 0
    private(set) var closed = false
    private(set) var released = false

    /// A read or write begins; false once the stream is closed.
    mutating func enter() -> Bool {
        if closed { return false }
        users += 1
        return true
    }

    /// A read or write ended; true when the caller must release the descriptors now.
    mutating func leave() -> Bool {
        users -= 1
        guard closed && users == 0 && !released else { return false }
        released = true
        return true
    }

    /// The stream is closed; true when the caller must release the descriptors now (nobody is using them).
    mutating func close() -> Bool {
        if closed { return false }
        closed = true
        guard users == 0 else { return false }
        released = true
        return true
    }

    /// The descriptors were handed to another owner: never release them here.
    mutating func detach() {
        closed = true
        released = true
    }
}
