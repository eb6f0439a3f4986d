import Testing
@testable import Cluster

/// The exchange benchmark completes its rounds over real sockets and reports sizes that match the
/// protocol's messages.
@Suite struct ExchangeBenchmarkTests {
    @Test func roundTripsComplete() throws {
        let result = try ExchangeBenchmark(peers: 3, batch: 16, embeddingDimension: 8, classes: 10, rounds: 30).run()
        #expect(result.peers == 3 && result.rounds == 30)
        // Payload bytes: the outputs carry 16x8 + 16x10 floats; the others two peers' worth.
        #expect(result.outputs_bytes > 4 * (16 * 8 + 16 * 10))
        #expect(result.others_bytes > 2 * 4 * (16 * 8 + 16 * 10))
        #expect(result.median_ms > 0 && result.p90_ms >= result.median_ms)
    }
}
