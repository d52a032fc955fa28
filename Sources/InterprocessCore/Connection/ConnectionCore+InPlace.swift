import InterprocessPlatform
import Synchronization

/// The zero-copy calls: reading a message where it lies in an ``InPlaceStream`` (shared memory), and lending the
/// sender room in the stream to write a message in place. Over other streams they fall back to copies.
extension ConnectionCore {
    /// Receives the next message and runs `body` on its bytes: where they lie in the stream's memory when the
    /// stream is an ``InPlaceStream`` and the message is next in it, otherwise on the message's own array.
    /// Returns nil at the end. The message is taken even when `body` throws (the error is rethrown).
    package nonisolated(nonsending) func receive<R>(inPlace body: (UnsafeRawBufferPointer) throws -> R) async throws -> R? {
        // The work is done by non-generic code: generic code called across modules runs unspecialized, and its
        // metadata lookups were a tenth of an in-place receive's time. For the same reason the result waits in a
        // plain slot of R rather than in an `R?` or a `Result` (whose metadata is looked up on every call).
        let slot = UnsafeMutablePointer<R>.allocate(capacity: 1)
        var filled = false
        defer {
            if filled { slot.deinitialize(count: 1) }
            slot.deallocate()
        }
        var failure: (any Error)?
        let more = try await receive(inPlaceErased: { bytes in
            do {
                slot.initialize(to: try body(bytes))
                filled = true
            } catch {
                failure = error
            }
        })
        if let failure { throw failure }
        guard more, filled else { return nil }
        filled = false
        return slot.move()
    }

    /// ``receive(inPlace:)`` with the result kept by `body`: false at the end.
    private nonisolated(nonsending) func receive(inPlaceErased body: (UnsafeRawBufferPointer) -> Void) async throws(IPCError) -> Bool {
        guard ring != nil, !rendezvousReceiver else {
            guard let bytes = try await receive() else { return false }
            bytes.withUnsafeBytes(body)
            // The caller never saw the array: its storage serves the next large message.
            reader.recycle(bytes)
            return true
        }
        // Set once a message was read in place (whether a credit frame was appended): the wait is over.
        var readInPlaceWithCredit: Bool?
        // A message lying whole in the ring is read at once, under two locks (`waitRound`'s closures and state
        // checks cost more).
        if locked.withLock({ state in state.channel.inbox.isEmpty && state.takeReaderRole() }) {
            if reader.pendingBytes == 0 { _ = readInPlace(ring!, upTo: .max, body, delivered: &readInPlaceWithCredit) }
            releaseReader(armIfWaiters: true)
            if let credit = readInPlaceWithCredit {
                if credit { afterAppend(data: false) }
                return true
            }
        }
        // Otherwise it is waited for: a message arriving while this task spins is read without an async call.
        var parking: Parking?
        var message: [UInt8]?
        var flag = false
        waiting: while true {
            if let parking { try await park(parking) }
            switch try waitRound(spin: true, inPlace: true, read: {
                readInPlace(ring!, upTo: .max, body, delivered: &readInPlaceWithCredit)
            }, { state throws(IPCError) -> ([UInt8]?, Bool)? in
                if let credit = readInPlaceWithCredit { return ([], credit) }
                return try state.takeMessage(noteWait: true)
            }) {
            case .done(let step):
                (message, flag) = step
                break waiting
            case .park(let next):
                parking = next
            }
        }
        if readInPlaceWithCredit != nil {
            if flag { afterAppend(data: false) }
            return true
        }
        afterTaken(message, flag)
        guard let message else { return false }
        message.withUnsafeBytes(body)
        reader.recycle(message)
        return true
    }

    private enum InPlaceNext { case inPlace(credit: Bool), creditApplied(wake: Bool), frame(Int), end, waiting(Int), violation(IPCError) }

    /// One step of reading in place (caller holds the reader role, and nothing is queued in the inbox). A data
    /// frame that lies whole in the stream goes to `body` where it is; anything else (control frames, a frame
    /// larger than the ring or than `limit`, the rest of a frame the frame reader started) goes through the
    /// frame reader, which reads exactly up to the end of that frame, so the next data frame is again read in
    /// place.
    /// When a message was read in place, `delivered` says whether a credit frame was appended.
    func readInPlace(_ ring: any InPlaceStream, upTo limit: Int, _ body: (UnsafeRawBufferPointer) -> Void, delivered: inout Bool?) -> ReadStep {
        if reader.pendingBytes > 0 {
            var read = 0
            let woke = pump(limit: reader.bytesToFrameEnd, bytesRead: &read)
            // The frame reader takes any amount (a frame larger than the ring arrives in pieces): wait for a byte.
            return woke || read > 0 || reader.pendingBytes == 0 ? .progressed : .waiting(1)
        }
        let headerSize = Wire.frameHeaderSize + Wire.dataPrefixSize
        let next: InPlaceNext
        do {
            next = try ring.withReadableBytes { bytes -> InPlaceNext in
                guard let bytes else { return .end }
                guard bytes.count >= Wire.frameHeaderSize else { return .waiting(Wire.frameHeaderSize) }
                // Each field is read from shared memory once, into a local, and checked before use.
                let length = Int(bytes.loadLE(UInt32.self, at: 0))
                let frameSize = Wire.frameHeaderSize + length
                if bytes[4] == FrameType.credit.rawValue && length == 8 {
                    // A credit is applied where it lies too: in a ping-pong of large messages one precedes
                    // every message (the byte-credit rule), and the frame reader would cost a round trip more.
                    guard bytes.count >= frameSize else { return .waiting(frameSize) }
                    let consumed = bytes.loadLE(UInt64.self, at: Wire.frameHeaderSize)
                    var effects = ConnectionState.Effects()
                    do throws(IPCError) {
                        try locked.withLock { state throws(IPCError) in
                            state.noteInput()
                            try state.channel.apply(.credit(consumed: consumed), effects: &effects)
                        }
                    } catch {
                        return .violation(error)
                    }
                    ring.consume(frameSize)
                    return .creditApplied(wake: effects.wake)
                }
                guard bytes[4] == FrameType.data.rawValue, length >= Wire.dataPrefixSize,
                      length - Wire.dataPrefixSize <= configuration.maxPayload, frameSize <= min(ring.inPlaceCapacity, limit)
                else { return .frame(frameSize) }
                guard bytes.count >= frameSize else { return .waiting(frameSize) }
                let seq = bytes.loadLE(UInt64.self, at: Wire.frameHeaderSize)
                let credit: Bool
                do throws(IPCError) {
                    credit = try locked.withLock { state throws(IPCError) in
                        state.noteInput()
                        return try state.channel.takeInPlace(seq: seq, size: frameSize - headerSize)
                    }
                } catch {
                    return .violation(error)
                }
                body(UnsafeRawBufferPointer(rebasing: bytes[headerSize..<frameSize]))
                ring.consume(frameSize)
                return .inPlace(credit: credit)
            }
        } catch let error as IPCError {
            fail(error, tellPeer: true)
            return .progressed
        } catch {
            fail(IPCError(.protocolViolation, "reading shared memory failed: \(error)"), tellPeer: true)
            return .progressed
        }
        switch next {
        case .inPlace(let credit):
            delivered = credit
            return .progressed
        case .creditApplied(let wake):
            // `wake`: the credit acknowledged messages not acknowledged before.
            if wake {
                wakeAll()
                reportMetrics()
            }
            return .progressed
        case .frame(let size):
            // Not a data frame to read in place: the frame reader takes exactly this frame (and checks it).
            var read = 0
            let woke = pump(limit: size, bytesRead: &read)
            return woke || read > 0 ? .progressed : .waiting(1)
        case .end:
            _ = pump()
            return .progressed
        case .waiting(let count):
            return .waiting(count)
        case .violation(let error):
            fail(error, tellPeer: true)
            return .progressed
        }
    }

    /// Sends a message of `byteCount` bytes that `body` writes: in place in the stream's memory when the stream
    /// is an ``InPlaceStream`` with room for it now, otherwise into an array that is then sent as usual (so a
    /// loan never waits for the peer to make room: within the channel's capacity a send does not block).
    /// If `body` throws, nothing is sent.
    package nonisolated(nonsending) func send(byteCount: Int, inPlace body: (UnsafeMutableRawBufferPointer) throws -> Void) async throws {
        let frameSize = Wire.frameHeaderSize + Wire.dataPrefixSize + byteCount
        // `ring!` rather than a binding: see ``writeToRing(_:)``.
        guard ring != nil, frameSize <= ring!.inPlaceCapacity else {
            return try await sendCopy(byteCount: byteCount, body)
        }
        // Claimed at once when nothing is in the way (no async call to wait); otherwise waited for.
        var claimed = try locked.withLock { state throws(IPCError) in try claimLoan(&state, frameSize: frameSize, byteCount: byteCount) } == .claimed
        while !claimed {
            let step: State.LoanStep = try await waitFor { state throws(IPCError) -> State.LoanStep? in
                let step = try claimLoan(&state, frameSize: frameSize, byteCount: byteCount)
                return step == .wait ? nil : step
            }
            if step == .flushFirst {
                flushNow()
                continue
            }
            guard step == .claimed else { return try await sendCopy(byteCount: byteCount, body) }
            claimed = true
        }
        var seq: UInt64?
        var rendezvous = false
        var inBody = false
        var commitError: IPCError?
        var ended: (write: Bool, wake: Bool)?
        do {
            try ring!.withWritableBytes(frameSize) { region in
                // Room only grows while this side is the one writer; none means the peer corrupted its position.
                guard let region else {
                    throw IPCError(.protocolViolation, "the peer corrupted the shared memory (its read position moved back); the connection is closed")
                }
                inBody = true
                try body(UnsafeMutableRawBufferPointer(rebasing: region[(Wire.frameHeaderSize + Wire.dataPrefixSize)...]))
                inBody = false
                // Committed, published and the loan ended under one lock. The channel may have closed or failed
                // meanwhile: then nothing is published.
                ended = locked.withLock { state in
                    do throws(IPCError) {
                        let committed = try state.channel.commitInPlaceData(size: byteCount)
                        seq = committed
                        rendezvous = state.channel.isRendezvous
                        region.storeBytes(of: Wire.dataFrameHeader(seq: committed, payloadCount: byteCount), as: (UInt64, UInt64).self)
                        ring!.publish(frameSize)
                    } catch {
                        commitError = error
                    }
                    return state.endLoan()
                }
            }
        } catch {
            if ended == nil { endLoan() }
            // Not from `body`: the stream failed (the peer is gone, or it corrupted the memory).
            if !inBody, let error = error as? IPCError, error.code != .alreadyClosed {
                fail(error, tellPeer: error.code == .protocolViolation)
            }
            throw error
        }
        if let ended {
            if ended.write { writeOutbox() }
            if ended.wake { wakeAll() }
        } else {
            endLoan()
        }
        if let commitError { throw commitError }
        if let seq, rendezvous { try await awaitTaken(seq) }
    }

    /// ``IOState/claimLoan(byteCount:hasRoom:)`` for a frame of `frameSize` bytes (lock held). The room is looked
    /// at only when the loan could be claimed: then nobody else writes, so it cannot shrink before the claim.
    private func claimLoan(_ state: inout State, frameSize: Int, byteCount: Int) throws(IPCError) -> State.LoanStep {
        try state.claimLoan(byteCount: byteCount, hasRoom: { ring!.hasRoom(frameSize) })
    }

    /// A loan ended (published or not): other sends may go on, and what was appended meanwhile is written.
    private func endLoan() {
        let (write, wake) = locked.withLock { $0.endLoan() }
        if write { writeOutbox() }
        if wake { wakeAll() }
    }

    /// The private buffer of ``send(byteCount:inPlace:)``. A small message is written into temporary memory and
    /// appended to the outbox like any small message (no allocation when it can go at once). A large one gets
    /// the outbox's spare (the buffer of an earlier large message, already written) when it is big enough and
    /// not more than twice too big, otherwise a new zeroed array; either way it is then sent as a segment the
    /// outbox may keep as its spare.
    private nonisolated(nonsending) func sendCopy(byteCount: Int, _ body: (UnsafeMutableRawBufferPointer) throws -> Void) async throws {
        if byteCount < Self.smallCopy {
            var waiting: [UInt8]?
            try withUnsafeTemporaryAllocation(byteCount: max(byteCount, 1), alignment: 16) { temporary in
                let region = UnsafeMutableRawBufferPointer(rebasing: temporary[0..<byteCount])
                region.initializeMemory(as: UInt8.self, repeating: 0)
                try body(region)
                let bytes = UnsafeRawBufferPointer(region)
                if try !trySend({ state throws(IPCError) in try state.appendData { $0.append(contentsOf: bytes) } }) {
                    waiting = [UInt8](bytes)
                }
            }
            // No credit now (or a rendezvous): wait like `send`.
            if let waiting { try await send { state throws(IPCError) in try state.appendData { $0 += waiting } } }
            return
        }
        var spare = byteCount >= Outbox.minSpare ? locked.withLock { $0.channel.outbox.takeSpare() } : nil
        let bytes: [UInt8]
        if var reused = spare.take(), reused.count >= byteCount, reused.count / 2 <= byteCount {
            reused.removeLast(reused.count - byteCount)
            // Unique by now (the writer dropped it when it was written), so this does not copy.
            try reused.withUnsafeMutableBytes { try body($0) }
            bytes = reused
        } else {
            bytes = try [UInt8](unsafeUninitializedCapacity: byteCount) { buffer, count in
                buffer.initialize(repeating: 0)
                try body(UnsafeMutableRawBufferPointer(buffer))
                count = byteCount
            }
        }
        // Kept as a segment, not copied; once written, the outbox may keep it for the next such message. (A closure
        // literal per call, as in `Sender.send`: one closure value used twice has its context on the heap.)
        if try trySend({ state throws(IPCError) in try state.appendData(segment: bytes, recyclable: true) }) { return }
        try await send { state throws(IPCError) in try state.appendData(segment: bytes, recyclable: true) }
    }
}
