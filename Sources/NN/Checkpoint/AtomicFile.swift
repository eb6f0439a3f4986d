import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Crash-safe file replacement: the bytes go to a temporary file in the same directory, which is flushed
/// to disk (`fsync`) and renamed over the destination; then the directory itself is flushed so the rename
/// survives a power cut. A reader sees the old file or the new one, never a mixture.
public enum AtomicFile {
    public static func write(_ data: Data, to path: String) throws {
        let url = URL(fileURLWithPath: path)
        let directory = url.deletingLastPathComponent().path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let temporary = directory + "/." + url.lastPathComponent + ".tmp-\(getpid())"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        guard fd >= 0 else { throw AtomicFileError.system("create \(temporary)", errno) }
        var ok = false
        defer {
            if !ok { unlink(temporary) }
        }
        if let e = data.withUnsafeBytes({ FileDescriptor.writeAll(fd, $0) }) {
            close(fd)
            throw AtomicFileError.system("write \(temporary)", e)
        }
        guard fsync(fd) == 0 else { let e = errno; close(fd); throw AtomicFileError.system("fsync \(temporary)", e) }
        guard close(fd) == 0 else { throw AtomicFileError.system("close \(temporary)", errno) }
        guard rename(temporary, path) == 0 else { throw AtomicFileError.system("rename \(temporary) to \(path)", errno) }
        ok = true
        let dfd = open(directory, O_RDONLY | O_DIRECTORY)
        if dfd >= 0 {
            _ = fsync(dfd)
            close(dfd)
        }
    }
}

/// A failed system call while writing a file.
public struct AtomicFileError: Error, CustomStringConvertible {
    public let description: String
    static func system(_ what: String, _ code: Int32) -> AtomicFileError {
        AtomicFileError(description: "\(what): \(String(cString: strerror(code)))")
    }
}

/// Writing to a file descriptor until every byte is out.
public enum FileDescriptor {
    /// Writes all of `bytes` to `descriptor`, retrying after interruptions and partial writes. Returns nil
    /// when everything was written, else the `errno` of the failure (a closed pipe: `EPIPE`; a full disk).
    @discardableResult
    public static func writeAll(_ descriptor: Int32, _ bytes: UnsafeRawBufferPointer) -> Int32? {
        var written = 0
        while written < bytes.count {
            let n = Glibc.write(descriptor, bytes.baseAddress! + written, bytes.count - written)
            if n < 0 {
                if errno == EINTR { continue }
                return errno
            }
            if n == 0 { return EIO }
            written += n
        }
        return nil
    }

    /// Writes `text` (UTF-8) in full, as the bytes version does.
    @discardableResult
    public static func writeAll(_ descriptor: Int32, _ text: String) -> Int32? {
        Array(text.utf8).withUnsafeBytes { writeAll(descriptor, $0) }
    }
}
