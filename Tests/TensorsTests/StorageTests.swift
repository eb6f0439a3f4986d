import Testing
@testable import Tensors

/// The storage pool: whole cached buffers reused, pages of cached buffers moved into buffers of other sizes,
/// and the limits (pieces per buffer, cache capacity, the smallest leftover kept). Each test uses its own pool,
/// so the other tests' tensors do not count in its statistics.
@Suite struct StorageTests {
    let page = StoragePool.pageBytes
    var floatsPerPage: Int { page / MemoryLayout<Float>.stride }

    /// Writes `value` into the first and last element of every page of `pages`.
    func mark(_ pages: StoragePool.Pages, _ value: (Int) -> Float) {
        let base = UnsafeMutablePointer<Float>(bitPattern: pages.address)!
        for p in 0..<(pages.bytes / page) {
            base[p * floatsPerPage] = value(p)
            base[(p + 1) * floatsPerPage - 1] = value(p)
        }
    }

    /// The value each page of `pages` holds (its first element), after checking the last one agrees.
    func marks(_ pages: StoragePool.Pages) -> [Float] {
        let base = UnsafeMutablePointer<Float>(bitPattern: pages.address)!
        return (0..<(pages.bytes / page)).map { p in
            let first = base[p * floatsPerPage], last = base[(p + 1) * floatsPerPage - 1]
            return first == last ? first : .nan
        }
    }

    @Test func requestsAreRoundedUpToWholePages() {
        let pool = StoragePool()
        let pages = pool.take(bytes: page + 1)
        #expect(pages.bytes == 2 * page)
        #expect(pages.pieces == [2 * page])
        #expect(pages.address % UInt(page) == 0)
        #expect(pool.statistics.freshBytes == 2 * page)
        pool.give(pages)
        #expect(pool.cachedBytes == 2 * page)
        pool.drain()
        #expect(pool.cachedBytes == 0)
        #expect(pool.statistics.releasedBytes == 2 * page)
    }

    @Test func aBufferOfTheSameSizeIsReusedWhole() {
        let pool = StoragePool()
        let first = pool.take(bytes: 5 * page)
        mark(first) { Float($0 + 1) }
        pool.give(first)
        let second = pool.take(bytes: 5 * page)
        #expect(second.address == first.address)
        #expect(marks(second) == [1, 2, 3, 4, 5])
        #expect(pool.statistics == .init(freshBytes: 5 * page, movedBytes: 0, moves: 0, releasedBytes: 0))
        pool.give(second)
        pool.drain()
    }

    /// A request no cached size matches takes the pages of cached buffers of other sizes, without fresh memory:
    /// the largest first, then the smallest that covers what is left.
    @Test(.enabled(if: StoragePool.movesPages)) func pagesMoveIntoABufferOfAnotherSize() {
        let pool = StoragePool(smallestAssembledBytes: 0)
        let buffers = [3, 5, 2].map { pool.take(bytes: $0 * page) }
        for (index, buffer) in buffers.enumerated() { mark(buffer) { Float(10 * (index + 1) + $0) } }
        buffers.forEach(pool.give)
        let joined = pool.take(bytes: 10 * page)
        #expect(joined.pieces == [5 * page, 3 * page, 2 * page])
        #expect(marks(joined) == [20, 21, 22, 23, 24, 10, 11, 12, 30, 31])
        #expect(pool.statistics == .init(freshBytes: 10 * page, movedBytes: 10 * page, moves: 3, releasedBytes: 0))
        #expect(pool.cachedBytes == 0)
        pool.give(joined)
        pool.drain()
    }

    /// A cached buffer larger than the request gives its first pages; the rest stays cached, at its address.
    @Test(.enabled(if: StoragePool.movesPages)) func aLargerCachedBufferIsSplit() {
        let pool = StoragePool(smallestKeptBytes: page, smallestAssembledBytes: 0)
        let whole = pool.take(bytes: 8 * page)
        mark(whole) { Float($0) }
        pool.give(whole)
        let head = pool.take(bytes: 3 * page)
        #expect(marks(head) == [0, 1, 2])
        #expect(pool.cachedBytes == 5 * page)
        let tail = pool.take(bytes: 5 * page)
        #expect(tail.address == whole.address + UInt(3 * page))
        #expect(marks(tail) == [3, 4, 5, 6, 7])
        #expect(pool.statistics.freshBytes == 8 * page)     // the head is moved pages, not fresh ones
        pool.give(head)
        pool.give(tail)
        pool.drain()
    }

    /// A buffer made of pieces is cached whole, and later split across and inside its pieces: each piece lies
    /// in one mapping, so each move is one `mremap`.
    @Test(.enabled(if: StoragePool.movesPages)) func anAssembledBufferSplitsAtAndInsideItsPieces() {
        let pool = StoragePool(smallestKeptBytes: page, smallestAssembledBytes: 0)
        let parts = [3, 5, 2].map { pool.take(bytes: $0 * page) }
        parts.forEach(pool.give)
        let joined = pool.take(bytes: 10 * page)   // pieces 5, 3, 2
        mark(joined) { Float($0) }
        pool.give(joined)
        let movesBefore = pool.statistics.moves
        let first = pool.take(bytes: 7 * page)     // all of the 5-page piece and 2 pages of the 3-page one
        #expect(first.pieces == [5 * page, 2 * page])
        #expect(marks(first) == [0, 1, 2, 3, 4, 5, 6])
        #expect(pool.statistics.moves == movesBefore + 2)
        let rest = pool.take(bytes: 3 * page)      // the cached rest, pieces 1 and 2, reused whole
        #expect(rest.address == joined.address + UInt(7 * page))
        #expect(rest.pieces == [page, 2 * page])
        #expect(marks(rest) == [7, 8, 9])
        pool.give(first)
        pool.give(rest)
        pool.drain()
    }

    /// A buffer is assembled from at most `maximumPieces` pieces and the rest is fresh pages; as many cached
    /// bytes, the most fragmented first, go back to the system, so that a fragmented cache does not grow.
    @Test(.enabled(if: StoragePool.movesPages)) func assemblyStopsAtTheMostPiecesAndReleasesFragments() {
        let pool = StoragePool(maximumPieces: 4, smallestKeptBytes: 1, smallestAssembledBytes: 0)
        let singles = (0..<6).map { _ in pool.take(bytes: page) }
        let whole = pool.take(bytes: 4 * page)
        singles.forEach(pool.give)
        pool.give(whole)
        let buffer = pool.take(bytes: 9 * page)    // the 4-page buffer, then three single pages
        #expect(buffer.pieces == [4 * page, page, page, page, 2 * page])
        #expect(pool.statistics.moves == 4)
        #expect(pool.statistics.freshBytes == 10 * page + 2 * page)
        #expect(pool.cachedBytes == page)          // of the three singles left, two were released
        #expect(pool.statistics.releasedBytes == 2 * page)
        pool.give(buffer)
        pool.drain()
    }

    /// Buffers below `smallestAssembledBytes` are never assembled (a cached buffer of their size, else fresh
    /// pages) and never cut up for larger ones: a step's small buffers stay whole for the next step.
    @Test(.enabled(if: StoragePool.movesPages)) func smallBuffersAreNeitherAssembledNorCutUp() {
        let pool = StoragePool(smallestKeptBytes: page, smallestAssembledBytes: 4 * page)
        let small = pool.take(bytes: 2 * page), large = pool.take(bytes: 8 * page)
        pool.give(small)
        pool.give(large)
        let three = pool.take(bytes: 3 * page)
        #expect(three.pieces == [3 * page])
        #expect(pool.statistics.moves == 0)
        #expect(pool.cachedBytes == 10 * page)
        let six = pool.take(bytes: 6 * page)
        #expect(six.address != large.address && six.pieces == [6 * page])
        #expect(pool.statistics.moves == 1)
        #expect(pool.cachedBytes == 4 * page)      // the small buffer and the large one's last 2 pages
        let two = pool.take(bytes: 2 * page)
        #expect(two.address == small.address || two.address == large.address + UInt(6 * page))
        [three, six, two].forEach(pool.give)
        pool.drain()
    }

    @Test func aFullCacheReturnsBuffersToTheSystem() {
        let pool = StoragePool(capacityBytes: 4 * 4096)
        let a = pool.take(bytes: 3 * 4096), b = pool.take(bytes: 3 * 4096)
        pool.give(a)
        pool.give(b)
        #expect(pool.cachedBytes == a.bytes)
        #expect(pool.statistics.releasedBytes == b.bytes)
        pool.drain()
    }

    @Test(.enabled(if: StoragePool.movesPages)) func smallLeftoversGoBackToTheSystem() {
        let pool = StoragePool(smallestKeptBytes: 2 * page, smallestAssembledBytes: 0)
        pool.give(pool.take(bytes: 4 * page))
        let buffer = pool.take(bytes: 3 * page)
        #expect(pool.cachedBytes == 0)
        #expect(pool.statistics.releasedBytes == page)
        pool.give(buffer)
        pool.drain()
    }

    /// Thousands of seeded takes and gives of mixed sizes: live buffers never overlap, every page keeps what was
    /// written into it while its buffer lives, and the bytes add up.
    @Test func mixedUseNeverHandsOutOverlappingPages() {
        let pool = StoragePool(capacityBytes: 96 * page, maximumPieces: 4, smallestKeptBytes: 2 * page,
                               smallestAssembledBytes: 3 * page)
        var generator = SeededGenerator(seed: 7)
        var live: [(pages: StoragePool.Pages, id: Float)] = []
        var nextID: Float = 1
        var liveBytes = 0
        for _ in 0..<3000 {
            if live.isEmpty || (live.count < 24 && generator.next() % 2 == 0) {
                let pages = pool.take(bytes: Int(1 + generator.next() % 24) * page - Int(generator.next() % 64))
                #expect(pages.pieces.reduce(0, +) == pages.bytes)
                #expect(pages.pieces.count <= 5)
                let range = pages.address..<(pages.address + UInt(pages.bytes))
                #expect(live.allSatisfy { other in
                    !range.overlaps(other.pages.address..<(other.pages.address + UInt(other.pages.bytes)))
                })
                let id = nextID
                mark(pages) { id * 100 + Float($0) }
                live.append((pages, id))
                liveBytes += pages.bytes
                nextID += 1
            } else {
                let (pages, id) = live.remove(at: Int(generator.next() % UInt64(live.count)))
                #expect(marks(pages) == (0..<(pages.bytes / page)).map { id * 100 + Float($0) })
                pool.give(pages)
                liveBytes -= pages.bytes
            }
            #expect(pool.cachedBytes <= 96 * page)
        }
        let statistics = pool.statistics
        #expect(statistics.freshBytes - statistics.releasedBytes == liveBytes + pool.cachedBytes)
        if StoragePool.movesPages { #expect(statistics.moves > 0) }
        live.forEach { pool.give($0.pages) }
        pool.drain()
    }

    /// A training step's pattern: the forward pass keeps activations of three sizes (stage 1 the largest), the
    /// backward pass frees them from the last stage back while it makes gradients of each stage's size. The
    /// pages the pool ever maps stay within the most bytes alive at once — what a cache keyed by size alone
    /// exceeds, keeping each size's spares — and steps after the first map no fresh pages.
    @Test(.enabled(if: StoragePool.movesPages)) func aTrainingStepHoldsNoMoreThanItsLiveBuffers() {
        let pool = StoragePool()
        let sizes = [4 << 20, 2 << 20, 1 << 20]     // stage 1, 2, 3 activations
        var live = 0, peak = 0
        func take(_ bytes: Int) -> StoragePool.Pages {
            let pages = pool.take(bytes: bytes)
            live += pages.bytes
            peak = Swift.max(peak, live)
            return pages
        }
        func give(_ pages: StoragePool.Pages) { live -= pages.bytes; pool.give(pages) }
        var freshAfterFirstStep = 0
        for step in 0..<5 {
            if step == 1 { freshAfterFirstStep = pool.statistics.freshBytes }
            var kept: [[StoragePool.Pages]] = sizes.map { size in (0..<3).map { _ in take(size) } }
            for stage in (0..<3).reversed() {
                var gradient = take(sizes[stage])
                while let activation = kept[stage].popLast() {
                    let next = take(sizes[stage])            // the gradient one layer down
                    give(activation)
                    give(gradient)
                    gradient = next
                }
                give(gradient)
            }
            #expect(live == 0)
        }
        let statistics = pool.statistics
        #expect(statistics.freshBytes - statistics.releasedBytes <= peak, "mapped \(statistics.freshBytes), peak \(peak)")
        #expect(statistics.freshBytes == freshAfterFirstStep)
        #expect(statistics.moves > 0)
        pool.drain()
    }

    @Test func largeStoragesArePageAlignedAndSmallOnesCacheLineAligned() {
        let large = Storage(count: StoragePool.minimumCount)
        let small = Storage(count: StoragePool.minimumCount - 1)
        #expect(UInt(bitPattern: large.base) % UInt(StoragePool.pageBytes) == 0)
        #expect(UInt(bitPattern: small.base) % 64 == 0)
        large.buffer.initialize(repeating: 1)
        small.buffer.initialize(repeating: 2)
        #expect(large.buffer.allSatisfy { $0 == 1 } && small.buffer.allSatisfy { $0 == 2 })
    }
}
