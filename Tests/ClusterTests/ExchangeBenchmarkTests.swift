import Foundation
import Synchronization
import Testing
@testable import Cluster

/// The exchange benchmark completes its rounds over real sockets and reports sizes that match the
/// protocol's messages, in one process and split into its two sides.
@Suite struct ExchangeBenchmarkTests {
    @Test func roundTripsComplete() throws {
        let result = try ExchangeBenchmark(peers: 3, batch: 16, embeddingDimension: 8, classes: 10, rounds: 30).run()
        #expect(result.peers == 3 && result.rounds == 30)
        // Payload bytes: the outputs carry 16x8 + 16x10 floats; the others two peers' worth.
        #expect(result.outputs_bytes > 4 * (16 * 8 + 16 * 10))
        #expect(result.others_bytes > 2 * 4 * (16 * 8 + 16 * 10))
        #expect(result.median_ms > 0 && result.p90_ms >= result.median_ms)
        // The coordinator's link: N outputs in and N others out a step, N(N-1) copies of a peer's tensors.
        #expect(result.coordinator_bytes_per_step == 3 * (result.outputs_bytes + result.others_bytes))
        #expect(abs(result.model_ms_at_1gbps - Double(3 * result.others_bytes) * 8 / 1e6) < 0.01)
    }

    /// The coordinator's side and the peers' side as separate runs (as `exchange-links.sh` puts them in two
    /// network namespaces), here on two threads over loopback.
    @Test func theTwoSidesRunApart() throws {
        let port = 20_000 + Int(getpid() % 10_000)
        let coordinator = Mutex<Result<ExchangeBenchmark.Result, any Error>?>(nil)
        let done = DispatchSemaphore(value: 0)
        Thread {
            let outcome = Result { try ExchangeBenchmark(peers: 2, batch: 8, embeddingDimension: 4, rounds: 20, role: .coordinator(bind: "tcp://127.0.0.1:\(port)")).run() }
            coordinator.withLock { $0 = outcome }
            done.signal()
        }.start()
        let peers = try ExchangeBenchmark(peers: 2, batch: 8, embeddingDimension: 4, rounds: 20, role: .peers(connect: "tcp://127.0.0.1:\(port)")).run()
        #expect(done.wait(timeout: .now() + 60) == .success)
        let served = try #require(try coordinator.withLock { $0 }?.get())
        #expect(peers.benchmark == "exchange" && peers.median_ms > 0 && served.benchmark == "exchange-coordinator")
        #expect(served.coordinator_bytes_per_step == peers.coordinator_bytes_per_step)
    }
}
