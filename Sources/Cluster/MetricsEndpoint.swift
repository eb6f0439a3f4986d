import Foundation
import Glibc
import Prometheus
import Synchronization
import Wire

/// Serves a Prometheus registry over plain HTTP (`GET /metrics`, the text exposition format), the way
/// cluster users scrape training jobs: `cohort peer|coordinator|launch --metrics-port`. One small thread
/// answers one request at a time; anything but `GET /metrics` (or `/`) gets 404 or 405.
public final class MetricsEndpoint: Sendable {
    public let registry: PrometheusCollectorRegistry
    /// The port bound (the one asked for, or the one the kernel chose for port 0).
    public let port: Int
    private let listener: Int32
    private let stopped = Atomic(false)
    private let done = DispatchSemaphore(value: 0)

    /// Binds `host:port` (port 0: any free port) and starts answering.
    /// - Throws: ``MetricsEndpointError`` when the port cannot be bound (in use, not allowed).
    public init(port: Int, host: String = "0.0.0.0", registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry()) throws {
        guard (0...65535).contains(port) else { throw MetricsEndpointError(description: "--metrics-port \(port): a port is 0...65535") }
        self.registry = registry
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw MetricsEndpointError(description: "cannot open a socket for the metrics endpoint: \(String(cString: strerror(errno)))") }
        var yes: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, socklen_t(MemoryLayout<Int32>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        guard inet_pton(AF_INET, host, &address.sin_addr) == 1 else {
            close(fd)
            throw MetricsEndpointError(description: "metrics endpoint: \(host) is not an IPv4 address")
        }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0, listen(fd, 16) == 0 else {
            let why = String(cString: strerror(errno))
            close(fd)
            throw MetricsEndpointError(description: "cannot serve metrics on \(host):\(port): \(why) (choose another --metrics-port)")
        }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        self.port = Int(UInt16(bigEndian: address.sin_port))
        listener = fd
        let thread = Thread { [self] in serve() }
        thread.name = "metrics"
        thread.start()
    }

    deinit { stop() }

    /// Stops answering and closes the port.
    public func stop() {
        guard !stopped.exchange(true, ordering: .relaxed) else { return }
        done.wait()
        close(listener)
    }

    private func serve() {
        defer { done.signal() }
        while !stopped.load(ordering: .relaxed) {
            var poller = pollfd(fd: listener, events: Int16(POLLIN), revents: 0)
            guard poll(&poller, 1, 200) > 0 else { continue }
            let client = accept(listener, nil, nil)
            guard client >= 0 else { continue }
            answer(client)
            close(client)
        }
    }

    /// Reads one request (headers only, at most 8 KiB, 2 s) and writes the response.
    private func answer(_ client: Int32) {
        var timeout = timeval(tv_sec: 2, tv_usec: 0)
        setsockopt(client, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(client, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var request = [UInt8]()
        var chunk = [UInt8](repeating: 0, count: 2048)
        while request.count < 8192 {
            let n = chunk.withUnsafeMutableBytes { recv(client, $0.baseAddress, $0.count, 0) }
            guard n > 0 else { break }
            request += chunk[0..<n]
            if Self.endsHeaders(request) { break }
        }
        let line = String(decoding: request.prefix { $0 != 13 && $0 != 10 }, as: UTF8.self).split(separator: " ")
        let response: [UInt8]
        if line.count < 2 {
            response = Self.response(400, "Bad Request", body: Array("bad request\n".utf8))
        } else if line[0] != "GET" && line[0] != "HEAD" {
            response = Self.response(405, "Method Not Allowed", body: Array("only GET\n".utf8), extra: "Allow: GET, HEAD\r\n")
        } else if line[1] == "/metrics" || line[1].hasPrefix("/metrics?") {
            let body = registry.emitToBuffer()
            response = Self.response(200, "OK", body: line[0] == "HEAD" ? [] : body, type: "text/plain; version=0.0.4; charset=utf-8",
                                     length: body.count)
        } else if line[1] == "/" {
            response = Self.response(200, "OK", body: Array("cohort metrics: GET /metrics\n".utf8))
        } else {
            response = Self.response(404, "Not Found", body: Array("not found; the metrics are at /metrics\n".utf8))
        }
        var sent = 0
        while sent < response.count {
            let n = response[sent...].withUnsafeBytes { send(client, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { return }
            sent += n
        }
    }

    /// Whether `bytes` hold the empty line that ends an HTTP request's headers.
    static func endsHeaders(_ bytes: [UInt8]) -> Bool {
        let text = String(decoding: bytes, as: UTF8.self)
        return text.contains("\r\n\r\n") || text.contains("\n\n")
    }

    private static func response(_ code: Int, _ reason: String, body: [UInt8], type: String = "text/plain; charset=utf-8",
                                 length: Int? = nil, extra: String = "") -> [UInt8] {
        let head = "HTTP/1.1 \(code) \(reason)\r\nContent-Type: \(type)\r\nContent-Length: \(length ?? body.count)\r\n\(extra)Connection: close\r\n\r\n"
        return Array(head.utf8) + body
    }
}

/// Why the metrics endpoint could not start.
public struct MetricsEndpointError: Error, CustomStringConvertible {
    public let description: String
}

/// A peer's series: its position, losses, accuracies and speed, labelled with its rank and model.
public struct PeerMetrics: Sendable {
    let registry: PrometheusCollectorRegistry
    let labels: [(String, String)]
    /// Terms of a step that are not losses.
    static let notLosses: Set<String> = ["accuracy", "lr", "distillation_weight", "skipped", "embedding_cosine", "exchange_seconds",
                                         "step_seconds", "idle_seconds", "peers_present"]

    public init(registry: PrometheusCollectorRegistry, rank: Int, model: String) {
        self.registry = registry
        labels = [("rank", "\(rank)"), ("model", model)]
        // Declared up front, so a scrape before the first step lists them.
        _ = registry.gauge("cohort_peer_global_step", "Steps this peer has trained.", labels: labels)
        _ = registry.gauge("cohort_peer_test_accuracy", "Top-1 accuracy on the test set at the last evaluation.", labels: labels)
    }

    private func gauge(_ name: String, _ help: String, _ extra: [(String, String)] = []) -> Gauge {
        registry.gauge(name, help, labels: labels + extra)
    }

    /// Records a training step: its status and loss terms.
    public func recordStep(_ status: PeerStatus, terms: [String: Double], batchSize: Int) {
        gauge("cohort_peer_global_step", "Steps this peer has trained.").set(Double(status.globalStep))
        gauge("cohort_peer_epoch", "The epoch in progress (1-based).").set(Double(status.epoch + 1))
        gauge("cohort_peer_train_accuracy", "Training top-1 accuracy, the running mean over the epoch.").set(status.accuracy)
        gauge("cohort_peer_images_per_second", "Training images per second (recent).").set(status.imagesPerSecond)
        gauge("cohort_peer_step_seconds", "Wall time of the last step (waiting for slower peers excluded).").set(status.stepSeconds)
        gauge("cohort_peer_exchange_seconds", "Time of the last step spent exchanging outputs.").set(status.exchangeSeconds)
        for (term, value) in terms where !Self.notLosses.contains(term) {
            gauge("cohort_peer_loss", "The last step's loss terms (total, ce, vcl, icl, kd, crcd, rrd, ...).", [("term", term)]).set(value)
        }
        if let lr = terms["lr"] { gauge("cohort_peer_learning_rate", "The optimizer's learning rate.").set(lr) }
        if let cosine = status.embeddingCosine {
            gauge("cohort_peer_embedding_cosine", "Mean pairwise cosine of the last step's embeddings (near 1: collapsed).").set(cosine)
        }
        registry.counter("cohort_peer_images_total", "Training images seen by this process.", labels: labels).increment(by: Int64(batchSize))
        if terms["skipped"] != nil {
            registry.counter("cohort_peer_skipped_steps_total", "Steps skipped for a non-finite loss or gradient.", labels: labels).increment()
        }
    }

    /// Records a test-set evaluation.
    public func recordEvaluation(top1: Double) {
        gauge("cohort_peer_test_accuracy", "Top-1 accuracy on the test set at the last evaluation.").set(top1)
    }
}

/// The coordinator's series: the cohort's step, who takes part, the ensemble's accuracy.
public struct CohortMetrics: Sendable {
    let registry: PrometheusCollectorRegistry

    public init(registry: PrometheusCollectorRegistry) { self.registry = registry }

    /// After a step: the steps trained and the peers that delivered.
    public func recordStep(globalStep: Int, present: Int) {
        registry.gauge("cohort_global_step", "Steps the cohort has trained.", labels: []).set(Double(globalStep))
        registry.gauge("cohort_peers_present", "Peers that delivered the last step's outputs.", labels: []).set(Double(present))
    }

    /// After an evaluation: the ensemble's top-1 test accuracy.
    public func recordEvaluation(ensembleTop1: Double) {
        registry.gauge("cohort_ensemble_test_accuracy", "Top-1 test accuracy of the peers' ensemble.", labels: []).set(ensembleTop1)
    }
}

extension PrometheusCollectorRegistry {
    /// The gauge `name` with `labels` (the same one on every call).
    func gauge(_ name: String, _ help: String, labels: [(String, String)]) -> Gauge {
        makeGauge(descriptor: MetricNameDescriptor(metricName: name, unitName: "", helpText: help), labels: labels)
    }

    /// The counter `name` with `labels` (the same one on every call).
    func counter(_ name: String, _ help: String, labels: [(String, String)]) -> Counter {
        makeCounter(descriptor: MetricNameDescriptor(metricName: name, unitName: "", helpText: help), labels: labels)
    }
}
