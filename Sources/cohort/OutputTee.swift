import Foundation
import Glibc
import NN

/// Copies everything this process writes to a file descriptor (standard error, standard output) into a
/// log file as well: `cohort launch --transport inproc --log-dir DIR`, where the whole cohort is this one
/// process. The descriptor is pointed at a pipe whose reader writes to the original and to the file.
final class OutputTee: @unchecked Sendable {
    private let descriptor: Int32
    private let original: Int32
    private let writeEnd: Int32
    private let reader: Thread
    private let done = DispatchSemaphore(value: 0)

    /// Starts copying `descriptor` into `file` (appended to).
    init(_ descriptor: Int32, into file: FileHandle) throws {
        var ends: [Int32] = [0, 0]
        guard pipe(&ends) == 0 else { throw CLIError(message: "cannot create a pipe for the log file: \(String(cString: strerror(errno)))") }
        self.descriptor = descriptor
        original = dup(descriptor)
        writeEnd = ends[1]
        let readEnd = ends[0], original = self.original, done = self.done
        reader = Thread {
            var buffer = [UInt8](repeating: 0, count: 65_536)
            while true {
                let n = buffer.withUnsafeMutableBytes { read(readEnd, $0.baseAddress, $0.count) }
                if n < 0 && errno == EINTR { continue }
                guard n > 0 else { break }
                _ = buffer.withUnsafeBytes { FileDescriptor.writeAll(original, UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
                try? file.write(contentsOf: Data(buffer[0..<n]))
            }
            close(readEnd)
            done.signal()
        }
        reader.start()
        dup2(writeEnd, descriptor)
    }

    /// Points the descriptor back at its original target and waits until everything written reached both.
    func finish() {
        if descriptor == 1 { fflush(nil) }
        dup2(original, descriptor)
        close(writeEnd)
        done.wait()
        close(original)
    }
}
