import Foundation
import Testing
import Wire
@testable import Cluster

/// `cohort monitor --status`: one row per peer.
@Suite struct StatusTableTests {
    static func status(rank: Int, cosine: Double?) -> PeerStatus {
        PeerStatus(rank: rank, host: "node-\(rank)", model: "resnet8", epoch: 1, epochs: 3, step: 9, stepsPerEpoch: 60, globalStep: 70,
                   loss: 1.25, accuracy: 0.5, testAccuracy: 0.75, imagesPerSecond: 100, stepSeconds: 0.5, exchangeSeconds: 0.01,
                   time: 0, embeddingCosine: cosine)
    }

    /// Issue 21: the embeddings' mean cosine per peer, marked when collapsed; "-" without MCL.
    @Test func showsTheEmbeddingsMeanCosine() {
        var table = StatusTable()
        let now = Date()
        table.update(.status(Self.status(rank: 0, cosine: 0.7712)), at: now)
        table.update(.status(Self.status(rank: 1, cosine: 0.99974)), at: now)
        table.update(.status(Self.status(rank: 2, cosine: nil)), at: now)
        let lines = table.render(now: now).split(separator: "\n").map(String.init)
        #expect(lines.count == 4)
        #expect(lines[0].contains("emb cos"))
        #expect(lines[1].contains("0.771") && !lines[1].contains("collapsed"))
        #expect(lines[2].contains("1.000 (collapsed)"))
        // Columns stay aligned: the "emb cos" column starts at the same offset in every row.
        let column = lines[0].range(of: "emb cos")!.lowerBound.utf16Offset(in: lines[0])
        #expect(lines[3].dropFirst(column).hasPrefix("-"))
        #expect(lines[1].dropFirst(column).hasPrefix("0.771"))
    }

    /// The field is optional on the wire: a status without it (an older peer) still decodes.
    @Test func statusWithoutTheCosineDecodes() throws {
        let encoded = StreamEvent.status(Self.status(rank: 0, cosine: nil)).frames()
        #expect(!String(decoding: encoded[1], as: UTF8.self).contains("embeddingCosine"))
        #expect(try StreamEvent.decode(encoded) == .status(Self.status(rank: 0, cosine: nil)))
        let with = StreamEvent.status(Self.status(rank: 0, cosine: 0.5))
        #expect(try StreamEvent.decode(with.frames()) == with)
    }
}
