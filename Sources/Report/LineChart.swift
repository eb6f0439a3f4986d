import Foundation

/// A line chart as a self-contained SVG: axes with round-number ticks, one polyline per series, a legend.
public struct LineChart: Sendable {
    public struct Series: Sendable {
        public var name: String
        public var points: [(x: Double, y: Double)]
        public init(name: String, points: [(x: Double, y: Double)]) { self.name = name; self.points = points }
    }

    public var title: String
    public var xLabel: String
    public var yLabel: String
    public var series: [Series]
    public var width = 720.0
    public var height = 360.0
    /// Whole-number ticks on the x axis (epochs).
    public var integerX = false

    /// The colours of successive series (Tableau 10).
    static let palette = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"]

    public init(title: String, xLabel: String, yLabel: String, series: [Series], integerX: Bool = false) {
        self.title = title; self.xLabel = xLabel; self.yLabel = yLabel; self.series = series; self.integerX = integerX
    }

    /// The chart as an `<svg>` element (with the XML namespace, so it is also a valid file on its own).
    public var svg: String {
        let left = 64.0, right = 16.0, top = 28.0, bottom = 44.0
        let legendRows = series.count
        let plotHeight = height - top - bottom
        let totalHeight = height + Double(legendRows) * 16 + 4
        let all = series.flatMap(\.points).filter { $0.x.isFinite && $0.y.isFinite }
        var out = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(fmt(width))\" height=\"\(fmt(totalHeight))\" viewBox=\"0 0 \(fmt(width)) \(fmt(totalHeight))\" font-family=\"sans-serif\" font-size=\"11\">\n"
        out += "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
        out += "<text x=\"\(fmt(width / 2))\" y=\"16\" text-anchor=\"middle\" font-size=\"13\" font-weight=\"bold\">\(escape(title))</text>\n"
        guard let xr = Self.range(all.map(\.x)), let yr = Self.range(all.map(\.y)) else {
            out += "<text x=\"\(fmt(width / 2))\" y=\"\(fmt(height / 2))\" text-anchor=\"middle\">no data</text>\n</svg>\n"
            return out
        }
        let xTicks = Self.ticks(xr.0, xr.1, integers: integerX), yTicks = Self.ticks(yr.0, yr.1)
        let x0 = Swift.min(xr.0, xTicks.first!), x1 = Swift.max(xr.1, xTicks.last!)
        let y0 = Swift.min(yr.0, yTicks.first!), y1 = Swift.max(yr.1, yTicks.last!)
        let plotWidth = width - left - right
        func px(_ x: Double) -> Double { left + (x1 > x0 ? (x - x0) / (x1 - x0) : 0.5) * plotWidth }
        func py(_ y: Double) -> Double { top + plotHeight - (y1 > y0 ? (y - y0) / (y1 - y0) : 0.5) * plotHeight }
        for t in yTicks {
            out += "<line x1=\"\(fmt(left))\" x2=\"\(fmt(width - right))\" y1=\"\(fmt(py(t)))\" y2=\"\(fmt(py(t)))\" stroke=\"#e5e5e5\"/>\n"
            out += "<text x=\"\(fmt(left - 6))\" y=\"\(fmt(py(t) + 4))\" text-anchor=\"end\">\(Self.label(t))</text>\n"
        }
        for t in xTicks {
            out += "<line x1=\"\(fmt(px(t)))\" x2=\"\(fmt(px(t)))\" y1=\"\(fmt(top + plotHeight))\" y2=\"\(fmt(top + plotHeight + 4))\" stroke=\"#333\"/>\n"
            out += "<text x=\"\(fmt(px(t)))\" y=\"\(fmt(top + plotHeight + 16))\" text-anchor=\"middle\">\(Self.label(t))</text>\n"
        }
        out += "<rect x=\"\(fmt(left))\" y=\"\(fmt(top))\" width=\"\(fmt(plotWidth))\" height=\"\(fmt(plotHeight))\" fill=\"none\" stroke=\"#333\"/>\n"
        out += "<text x=\"\(fmt(left + plotWidth / 2))\" y=\"\(fmt(top + plotHeight + 32))\" text-anchor=\"middle\">\(escape(xLabel))</text>\n"
        out += "<text transform=\"translate(14 \(fmt(top + plotHeight / 2))) rotate(-90)\" text-anchor=\"middle\">\(escape(yLabel))</text>\n"
        for (i, s) in series.enumerated() {
            let color = Self.palette[i % Self.palette.count]
            let points = s.points.filter { $0.x.isFinite && $0.y.isFinite }
            if points.count == 1 {
                out += "<circle cx=\"\(fmt(px(points[0].x)))\" cy=\"\(fmt(py(points[0].y)))\" r=\"3\" fill=\"\(color)\"/>\n"
            } else if !points.isEmpty {
                let path = points.map { "\(fmt(px($0.x))),\(fmt(py($0.y)))" }.joined(separator: " ")
                out += "<polyline fill=\"none\" stroke=\"\(color)\" stroke-width=\"1.5\" points=\"\(path)\"><title>\(escape(s.name))</title></polyline>\n"
                if points.count <= 40 {
                    for p in points { out += "<circle cx=\"\(fmt(px(p.x)))\" cy=\"\(fmt(py(p.y)))\" r=\"2.5\" fill=\"\(color)\"/>\n" }
                }
            }
            let ly = height + Double(i) * 16
            out += "<line x1=\"\(fmt(left))\" x2=\"\(fmt(left + 18))\" y1=\"\(fmt(ly - 4))\" y2=\"\(fmt(ly - 4))\" stroke=\"\(color)\" stroke-width=\"2\"/>\n"
            out += "<text x=\"\(fmt(left + 24))\" y=\"\(fmt(ly))\">\(escape(s.name))</text>\n"
        }
        out += "</svg>\n"
        return out
    }

    static func range(_ values: [Double]) -> (Double, Double)? {
        guard let lo = values.min(), let hi = values.max() else { return nil }
        if lo == hi { return (lo - (lo == 0 ? 1 : abs(lo) * 0.1), hi + (hi == 0 ? 1 : abs(hi) * 0.1)) }
        return (lo, hi)
    }

    /// About five round-number ticks covering `lo...hi`; whole numbers only when `integers` (epochs).
    static func ticks(_ lo: Double, _ hi: Double, integers: Bool = false) -> [Double] {
        let raw = (hi - lo) / 5
        let magnitude = pow(10, floor(log10(raw)))
        var step = (integers ? [1.0, 2, 5, 10] : [1.0, 2, 2.5, 5, 10]).map { $0 * magnitude }.first { $0 >= raw } ?? 10 * magnitude
        if integers { step = Swift.max(1, step.rounded()) }
        let first = floor(lo / step) * step, last = ceil(hi / step) * step
        return stride(from: first, through: last + step / 2, by: step).map { abs($0) < step * 1e-9 ? 0 : $0 }
    }

    static func label(_ v: Double) -> String {
        if v == 0 { return "0" }
        if abs(v) >= 1e5 || abs(v) < 1e-3 { return String(format: "%.1e", v) }
        if v == v.rounded() { return String(format: "%.0f", v) }
        return String(format: "%g", (v * 1e4).rounded() / 1e4)
    }

    private func fmt(_ v: Double) -> String { String(format: "%.1f", v) }
}

/// `text` with the XML special characters escaped.
func escape(_ text: String) -> String {
    text.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
        .replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "\"", with: "&quot;")
}
