import Testing
import Tensors
import TestSupport
@testable import Distill

/// The collapse metric and its watch (issue 21): the mean pairwise cosine of a batch's unit embeddings.
@Suite struct EmbeddingCollapseTests {
    /// Unit rows drawn at random (normal entries, each row divided by its norm).
    static func unitRows(_ rows: Int, _ d: Int, seed: UInt64) -> [Float] {
        var values = randn([rows, d], seed: seed).scalars
        for a in 0..<rows {
            var squares: Float = 0
            for k in 0..<d { squares += values[a * d + k] * values[a * d + k] }
            let norm = squares.squareRoot()
            for k in 0..<d { values[a * d + k] /= norm }
        }
        return values
    }

    /// The closed form against the Gram matrix's off-diagonal mean, in double precision.
    @Test(arguments: [(2, 3), (7, 5), (128, 128), (33, 17)])
    func meanCosineIsTheGramMatrixOffDiagonalMean(rows: Int, d: Int) {
        let e = Self.unitRows(rows, d, seed: UInt64(rows * 1000 + d))
        var sum = 0.0
        for a in 0..<rows { for b in 0..<rows where a != b {
            for k in 0..<d { sum += Double(e[a * d + k]) * Double(e[b * d + k]) }
        } }
        let reference = sum / Double(rows * (rows - 1))
        #expect(abs(EmbeddingCollapse.meanPairwiseCosine(e, rows: rows, dimension: d) - reference) < 1e-9)
    }

    @Test func extremes() {
        // Every row the same direction: 1.
        let same = [Float](repeating: 0.5, count: 4 * 4)
        #expect(abs(EmbeddingCollapse.meanPairwiseCosine(same, rows: 4, dimension: 4) - 1) < 1e-12)
        // Two opposite rows: -1, the least possible for two.
        #expect(abs(EmbeddingCollapse.meanPairwiseCosine([1, 0, -1, 0], rows: 2, dimension: 2) + 1) < 1e-12)
        // Random directions in 128 dimensions: near 0.
        let spread = EmbeddingCollapse.meanPairwiseCosine(Self.unitRows(128, 128, seed: 3), rows: 128, dimension: 128)
        #expect(abs(spread) < 0.02)
    }

    @Test func watchWarnsOnceAfterThePatience() {
        var watch = EmbeddingCollapse.Watch(name: "peer 0's embedding")
        for _ in 0..<(EmbeddingCollapse.Watch.patience - 1) { #expect(watch.observe(0.999) == nil) }
        let warning = watch.observe(0.999)
        #expect(warning?.contains("peer 0's embedding has collapsed") == true)
        #expect(warning?.contains("mcl.soft_ramp_epochs") == true)
        for _ in 0..<200 { #expect(watch.observe(0.9999) == nil) }
        #expect(watch.warned)
    }

    @Test func aHealthyStepResetsTheCount() {
        var watch = EmbeddingCollapse.Watch(name: "x")
        for i in 0..<500 {
            // Collapsed 49 steps in 50: never 50 in a row.
            #expect(watch.observe(i % 50 == 49 ? 0.5 : 0.995) == nil)
        }
        #expect(!watch.warned)
        for _ in 0..<500 { #expect(watch.observe(0.98) == nil) }
    }
}
