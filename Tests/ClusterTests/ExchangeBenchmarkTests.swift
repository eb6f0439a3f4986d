import Foundation
import Synchronization
import Testing
import Runtime
@testable import Cluster

/// The exchange benchmark completes its rounds over real sockets, in both modes, and reports sizes that
/// match the protocol's messages, in one process and split into its sides.
@Suite struct ExchangeBenchmarkTests {
    @Test func roundTripsCompleteThroughTheCoordinator() throws {
        let result = try ExchangeBenchmark(peers: 3, batch: 16, embeddingDimension: 8, classes: 10, rounds: 30).run()
        #expect(result.peers == 3 && result.rounds == 30 && result.mode == "coordinator" && result.round_ms == nil)
        // Payload bytes: the outputs carry 16x8 + 16x10 floats; the others two peers' worth.
        #expect(result.outputs_bytes > 4 * (16 * 8 + 16 * 10))
        #expect(result.others_bytes > 2 * 4 * (16 * 8 + 16 * 10))
        #expect(result.median_ms > 0 && result.p90_ms >= result.median_ms)
        // The coordinator's link: N steps and N others out, N outputs in: N(N-1) copies of a peer's tensors.
        #expect(result.coordinator_bytes_per_step == 3 * (result.step_bytes + result.outputs_bytes + result.others_bytes))
        #expect(abs(result.model_ms_at_1gbps - Double(3 * (result.step_bytes + result.others_bytes)) * 8 / 1e6) < 0.01)
    }

    /// Mesh mode: the tensors go from peer to peer; the coordinator passes headers, a few hundred bytes
    /// per peer, and the busiest link is a peer's: N-1 copies of its outputs each way.
    @Test func roundTripsCompleteFromPeerToPeer() throws {
        let result = try ExchangeBenchmark(peers: 3, batch: 16, embeddingDimension: 8, classes: 10, rounds: 30, mode: .mesh).run()
        #expect(result.mode == "mesh" && result.median_ms > 0)
        #expect(result.outputs_bytes > 4 * (16 * 8 + 16 * 10) && result.others_bytes < 400 && result.step_bytes < 400)
        #expect(result.coordinator_bytes_per_step < 3 * 1000)
        #expect(result.peer_link_bytes_per_step >= 2 * result.outputs_bytes)
        #expect(abs(result.model_ms_at_1gbps - Double(result.peer_link_bytes_per_step) * 8 / 1e6) < 0.01)
    }

    /// The coordinator's side and each peer as separate runs (as `exchange-links.sh` puts them in network
    /// namespaces of their own), here on threads over loopback.
    @Test(arguments: ["coordinator", "mesh"]) func theSidesRunApart(mode: String) throws {
        let mode = try #require(CohortConfiguration.NetworkSettings.ExchangeMode(rawValue: mode))
        let port = 20_000 + Int(getpid() % 10_000) + (mode == .mesh ? 1 : 0)
        let coordinator = Mutex<Result<ExchangeBenchmark.Result, any Error>?>(nil)
        let done = DispatchSemaphore(value: 0)
        Thread {
            let outcome = Result {
                try ExchangeBenchmark(peers: 2, batch: 8, embeddingDimension: 4, rounds: 20, role: .coordinator(bind: "tcp://127.0.0.1:\(port)"), mode: mode).run()
            }
            coordinator.withLock { $0 = outcome }
            done.signal()
        }.start()
        let other = Mutex<Result<ExchangeBenchmark.Result, any Error>?>(nil)
        let otherDone = DispatchSemaphore(value: 0)
        Thread {
            let outcome = Result {
                try ExchangeBenchmark(peers: 2, batch: 8, embeddingDimension: 4, rounds: 20, role: .peers(connect: "tcp://127.0.0.1:\(port)"),
                                      mode: mode, ranks: [1]).run()
            }
            other.withLock { $0 = outcome }
            otherDone.signal()
        }.start()
        let peer = try ExchangeBenchmark(peers: 2, batch: 8, embeddingDimension: 4, rounds: 20, role: .peers(connect: "tcp://127.0.0.1:\(port)"),
                                         mode: mode, ranks: [0]).run()
        #expect(done.wait(timeout: .now() + 60) == .success && otherDone.wait(timeout: .now() + 60) == .success)
        let served = try #require(try coordinator.withLock { $0 }?.get())
        let second = try #require(try other.withLock { $0 }?.get())
        #expect(peer.benchmark == "exchange" && peer.median_ms > 0 && served.benchmark == "exchange-coordinator")
        #expect(peer.round_ms?.count == 18 && second.round_ms?.count == 18, "each process reports its own rounds, the first tenth skipped")
        #expect(served.coordinator_bytes_per_step == peer.coordinator_bytes_per_step)
    }
}
