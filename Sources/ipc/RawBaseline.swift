#if canImport(Glibc)
import Glibc
#endif

/// The raw baseline of `ipc bench`: the same length-prefixed framing in plain blocking system calls over a
/// socketpair (one writev per message; reads of up to 256 KiB parsed in place, a large frame read straight into
/// a buffer of its own), as in the shared C reference program. What the kernel allows, measured in the same run.
final class RawStream {
    let fd: Int32
    private let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 256 << 10, alignment: 16)
    private var big = UnsafeMutableRawBufferPointer.allocate(byteCount: 1, alignment: 16)
    private var start = 0
    private var end = 0

    init(fd: Int32) { self.fd = fd }
    deinit {
        buffer.deallocate()
        big.deallocate()
    }

    func send(_ payload: UnsafeRawBufferPointer) {
        var header = UInt32(payload.count).littleEndian
        withUnsafeMutableBytes(of: &header) { h in
            var iov = [iovec(iov_base: h.baseAddress, iov_len: 4), iovec(iov_base: UnsafeMutableRawPointer(mutating: payload.baseAddress), iov_len: payload.count)]
            var index = 0
            while index < iov.count {
                let n = iov.withUnsafeMutableBufferPointer { writev(fd, $0.baseAddress! + index, Int32($0.count - index)) }
                if n < 0 {
                    if errno == EINTR { continue }
                    fatalError("baseline writev: \(errno)")
                }
                var left = n
                while index < iov.count && left >= iov[index].iov_len {
                    left -= iov[index].iov_len
                    index += 1
                }
                if index < iov.count {
                    iov[index].iov_base += left
                    iov[index].iov_len -= left
                }
            }
        }
    }

    private func fill(_ need: Int) {
        if end - start >= need { return }
        if start > 0 {
            buffer.baseAddress!.copyMemory(from: buffer.baseAddress! + start, byteCount: end - start)
            end -= start
            start = 0
        }
        while end < need {
            let n = read(fd, buffer.baseAddress! + end, buffer.count - end)
            if n < 0 && errno == EINTR { continue }
            precondition(n > 0, "baseline: peer closed the stream")
            end += n
        }
    }

    /// The next message, valid until the next call.
    func receive() -> UnsafeRawBufferPointer {
        fill(4)
        let length = Int(UInt32(littleEndian: buffer.loadUnaligned(fromByteOffset: start, as: UInt32.self)))
        start += 4
        if length <= buffer.count / 2 {
            fill(length)
            defer { start += length }
            return UnsafeRawBufferPointer(rebasing: buffer[start..<(start + length)])
        }
        if big.count < length {
            big.deallocate()
            big = .allocate(byteCount: length, alignment: 16)
        }
        let have = min(end - start, length)
        big.baseAddress!.copyMemory(from: buffer.baseAddress! + start, byteCount: have)
        start += have
        var got = have
        while got < length {
            let n = read(fd, big.baseAddress! + got, length - got)
            if n < 0 && errno == EINTR { continue }
            precondition(n > 0, "baseline: peer closed the stream")
            got += n
        }
        return UnsafeRawBufferPointer(rebasing: big[0..<length])
    }
}
