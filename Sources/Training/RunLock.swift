import Foundation

/// One writer per run directory: an exclusive `flock` on a lock file in it, held for the life of the
/// process that writes the directory (the kernel releases it when the process dies, however it dies).
/// A second writer is refused at once, told which process on which host holds the directory.
public final class RunLock {
    /// The directory is in use by another process.
    public struct Held: Error, CustomStringConvertible {
        public let directory: String
        /// "PID 1234 on host-a (cohort launch)", as the holder recorded it.
        public let holder: String
        public var description: String {
            "\(directory) is in use by another process (\(holder)); wait for it to finish or stop it, or choose another output"
        }
    }

    public let path: String
    private let descriptor: Int32

    /// Takes the lock `DIRECTORY/.<role>.lock` (creating the directory), or throws ``Held``.
    /// - Parameter role: which writer this is (`launch`, `coordinator`, `peer`, `train`); writers of
    ///   different parts of one directory (the coordinator and its peers) take different roles.
    public init(directory: String, role: String, what: String) throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        path = directory + "/.\(role).lock"
        descriptor = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard descriptor >= 0 else { throw TrainingError.io("cannot open \(path): \(String(cString: strerror(errno)))") }
        guard flock(descriptor, LOCK_EX | LOCK_NB) == 0 else {
            var buffer = [UInt8](repeating: 0, count: 256)
            let count = pread(descriptor, &buffer, buffer.count, 0)
            close(descriptor)
            let recorded = count > 0 ? String(decoding: buffer[..<count], as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines) : ""
            throw Held(directory: directory, holder: recorded.isEmpty ? "a process that has not said which" : recorded)
        }
        let text = "PID \(getpid()) on \(ProcessInfo.processInfo.hostName) (\(what))\n"
        _ = ftruncate(descriptor, 0)
        _ = text.withCString { pwrite(descriptor, $0, strlen($0), 0) }
    }

    deinit {
        _ = ftruncate(descriptor, 0)
        close(descriptor)  // releases the lock
    }
}
