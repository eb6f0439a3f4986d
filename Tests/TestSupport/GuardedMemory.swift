#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Where guarded values sit: their first element right after the leading guard page, or their last element
/// right before the trailing one.
public enum GuardPlacement: Sendable, CaseIterable { case againstStart, againstEnd }

/// Memory with an inaccessible page on each side: a kernel that reads one byte before or after the values it
/// was given crashes the test instead of reading a neighbour's memory silently. Used to prove that the
/// vector kernels' loads stay inside their operands (plain loads near an operand's ends could cross into an
/// unmapped page in a real program).
public final class GuardedMemory<Element: BitwiseCopyable> {
    private let base: UnsafeMutableRawPointer
    private let length: Int
    /// The values, `count` of them.
    public let pointer: UnsafeMutablePointer<Element>
    public let count: Int

    /// Maps room for `count` elements between two `PROT_NONE` pages and copies `values` into it.
    public init(_ values: [Element], placement: GuardPlacement) {
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        count = values.count
        let bytes = MemoryLayout<Element>.stride * count
        let inner = (bytes + page - 1) / page * page
        length = inner + 2 * page
        guard let mapped = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
              mapped != MAP_FAILED else { fatalError("GuardedMemory: mmap of \(length) bytes failed") }
        base = mapped
        precondition(mprotect(base, page, PROT_NONE) == 0 && mprotect(base + page + inner, page, PROT_NONE) == 0,
                     "GuardedMemory: mprotect failed")
        let start = placement == .againstStart ? base + page : base + page + inner - bytes
        pointer = start.bindMemory(to: Element.self, capacity: count)
        values.withUnsafeBufferPointer { pointer.update(from: $0.baseAddress!, count: count) }
    }

    /// The values as an array (a copy).
    public var values: [Element] { Array(UnsafeBufferPointer(start: pointer, count: count)) }

    deinit { munmap(base, length) }
}
