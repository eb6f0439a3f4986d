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

    /// Issue 20: `--status` shows each process's phase — the coordinator's on a line of its own, each peer's
    /// in a column (joining, waiting, training, evaluating, checkpointing, finished, absent) — and the latest
    /// test accuracy, including the one measured after the last step.
    @Test func showsEveryPhaseAndTheLatestTestAccuracy() {
        func phase(_ rank: Int?, _ p: Phase, _ detail: String? = nil) -> StreamEvent {
            .phase(PhaseChange(rank: rank, host: rank.map { "node-\($0)" } ?? "head", phase: p, detail: detail, time: 0))
        }
        func row(_ table: StatusTable, _ rank: Int) -> String {
            table.render(now: Date()).split(separator: "\n").map(String.init).first { $0.hasPrefix("\(rank) ") } ?? ""
        }
        var table = StatusTable()
        table.update(phase(nil, .evaluating, "the teacher (resnet20)"))
        #expect(table.render().hasPrefix("coordinator: evaluating (the teacher (resnet20))\n"))
        table.update(phase(0, .waiting))
        table.update(phase(1, .waiting))
        #expect(row(table, 0).contains("node-0") && row(table, 0).contains("waiting"))
        #expect(table.phase(of: 1) == .waiting && table.phase(of: 2) == nil)
        // A step's status: training, no test accuracy yet.
        let noTest = PeerStatus(rank: 0, host: "node-0", model: "resnet8", epoch: 0, epochs: 2, step: 3, stepsPerEpoch: 4, globalStep: 4,
                                loss: 1.5, accuracy: 0.25, testAccuracy: nil, imagesPerSecond: 50, stepSeconds: 1, exchangeSeconds: 0.01, time: 0)
        table.update(.status(noTest))
        #expect(table.phase(of: 0) == .training)
        for p in [Phase.evaluating, .checkpointing] {
            table.update(phase(0, p))
            #expect(table.phase(of: 0) == p && row(table, 0).contains(p.rawValue))
        }
        // After the evaluation the peer sends its status again, with the test accuracy, and waits.
        table.update(.status(noTest.with(testAccuracy: 0.6123)))
        table.update(phase(0, .waiting))
        #expect(table.phase(of: 0) == .waiting && row(table, 0).contains("61.23%"))
        table.update(phase(1, .absent, "nothing heard for 30 s"))
        table.update(phase(2, .joining, "takes part from the next step"))
        #expect(row(table, 1).contains("absent") && row(table, 2).contains("joining") && row(table, 2).contains("node-2"))
        table.update(.end(StreamEnd(ok: true, reason: "finished", time: 0)))
        #expect(table.phase(of: 0) == .finished && table.phase(of: 2) == .finished && table.phase(of: 1) == .absent)
        #expect(table.render().hasPrefix("coordinator: finished (run finished)"))
        #expect(row(table, 0).contains("61.23%"), "the last accuracy stays")
    }

    /// Phase events survive the stream's encoding; an older monitor skips their topic (it is unknown to it).
    @Test func phaseEventsRoundTrip() throws {
        let event = StreamEvent.phase(PhaseChange(rank: 3, host: "n", phase: .checkpointing, detail: nil, time: 12.5))
        #expect(try StreamEvent.decode(event.frames()) == event)
        #expect(throws: WireError.self) { try StreamEvent.decode([Array("phase".utf8), Array(#"{"host":"n","phase":"dancing","time":1}"#.utf8)]) }
    }
}
