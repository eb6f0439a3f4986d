#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A 64-byte-aligned, uninitialised buffer of `Float32` values.
///
/// A storage is owned by the tensors that reference it (a reshape shares its input's storage). It is
/// freed when the last tensor referencing it goes away. Storages are not thread-safe: a tensor and its
/// storage stay on the thread that made them.
public final class Storage {
    /// The number of `Float` elements.
    public let count: Int
    /// The first element. Valid for `count` elements while the storage lives.
    public let base: UnsafeMutablePointer<Float>

    /// Allocates `count` uninitialised elements (at least one, so `base` is never dangling).
    public init(count: Int) {
        precondition(count >= 0, "Storage count must be non-negative, got \(count)")
        self.count = count
        var raw: UnsafeMutableRawPointer?
        let bytes = Swift.max(count, 1) * MemoryLayout<Float>.stride
        let status = posix_memalign(&raw, 64, bytes)
        precondition(status == 0 && raw != nil, "posix_memalign of \(bytes) bytes failed (\(status))")
        base = raw!.bindMemory(to: Float.self, capacity: Swift.max(count, 1))
    }

    deinit { free(base) }

    /// A buffer pointer over all elements.
    @inlinable public var buffer: UnsafeMutableBufferPointer<Float> {
        UnsafeMutableBufferPointer(start: base, count: count)
    }
}
