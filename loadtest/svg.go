package loadtest

import (
	"fmt"
	"html"
	"math"
	"strconv"
	"strings"
)

// A small SVG plotter for the HTML report: lines, points and bars on
// linear or log axes, with ticks and a legend. No scripts, no external
// resources.

type seriesKind uint8

const (
	kindLine seriesKind = iota
	kindPoints
	kindBars // pts are [from, to, height]
)

type series struct {
	name  string
	kind  seriesKind
	color string
	pts   [][2]float64
	bars  [][3]float64
}

type plot struct {
	title, xlabel, ylabel string
	logX                  bool
	xTickLabels           map[float64]string // fixed ticks (instead of computed ones)
	series                []series
}

var palette = []string{"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"}

const (
	plotW, plotH             = 760, 300
	padL, padR, padT, padB   = 64, 16, 30, 44
	innerW, innerH           = plotW - padL - padR, plotH - padT - padB
	legendLine, legendOffset = 14, 8
)

// niceTicks returns about n round tick values covering [lo, hi].
func niceTicks(lo, hi float64, n int) []float64 {
	if hi <= lo {
		hi = lo + 1
	}
	raw := (hi - lo) / float64(n)
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	step := mag
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if m*mag >= raw {
			step = m * mag
			break
		}
	}
	var out []float64
	for v := math.Ceil(lo/step) * step; v <= hi+step*1e-9; v += step {
		out = append(out, math.Round(v/step)*step)
	}
	return out
}

func fmtNum(v float64) string {
	switch a := math.Abs(v); {
	case a >= 1e6:
		return strconv.FormatFloat(v/1e6, 'g', 4, 64) + "M"
	case a >= 1e4:
		return strconv.FormatFloat(v/1e3, 'g', 4, 64) + "k"
	default:
		return strconv.FormatFloat(v, 'g', 4, 64)
	}
}

// svg renders the plot; an empty plot renders a note instead.
func (p plot) svg() string {
	var xs, ys []float64
	for _, s := range p.series {
		for _, pt := range s.pts {
			xs, ys = append(xs, pt[0]), append(ys, pt[1])
		}
		for _, b := range s.bars {
			xs, ys = append(xs, b[0], b[1]), append(ys, b[2])
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, `<svg class="plot" xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" role="img" aria-label="%s">`,
		plotW, plotH, plotW, plotH, html.EscapeString(p.title))
	fmt.Fprintf(&b, `<text x="%d" y="18" font-size="14" font-weight="bold">%s</text>`, padL, html.EscapeString(p.title))
	if len(xs) == 0 {
		fmt.Fprintf(&b, `<text x="%d" y="%d" font-size="12" fill="#888">no data</text></svg>`, padL, padT+innerH/2)
		return b.String()
	}
	xmin, xmax := minMax(xs)
	_, ymax := minMax(ys)
	ymin := 0.0
	if ymax <= ymin {
		ymax = ymin + 1
	}
	ymax *= 1.05
	tx := func(v float64) float64 { return v }
	if p.logX {
		xmin = math.Max(xmin, 1e-6)
		xmin = math.Pow(10, math.Floor(math.Log10(xmin)))
		xmax = math.Pow(10, math.Ceil(math.Log10(math.Max(xmax, xmin*10))))
		tx = func(v float64) float64 { return math.Log10(math.Max(v, 1e-9)) }
	}
	if xmax <= xmin {
		xmax = xmin + 1
	}
	X := func(v float64) float64 { return padL + (tx(v)-tx(xmin))/(tx(xmax)-tx(xmin))*innerW }
	Y := func(v float64) float64 { return padT + innerH - (v-ymin)/(ymax-ymin)*innerH }

	// Axes and grid.
	fmt.Fprintf(&b, `<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#999"/>`, padL, padT, innerW, innerH)
	for _, t := range niceTicks(ymin, ymax, 5) {
		y := Y(t)
		fmt.Fprintf(&b, `<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#eee"/><text x="%d" y="%.1f" font-size="11" text-anchor="end">%s</text>`,
			padL, padL+innerW, y, y, padL-4, y+4, fmtNum(t))
	}
	var xt []float64
	switch {
	case p.xTickLabels != nil:
		for v := range p.xTickLabels {
			xt = append(xt, v)
		}
	case p.logX:
		for v := xmin; v <= xmax*1.0001; v *= 10 {
			xt = append(xt, v)
		}
	default:
		xt = niceTicks(xmin, xmax, 8)
	}
	for _, t := range xt {
		if t < xmin-1e-9 || t > xmax+1e-9 {
			continue
		}
		x := X(t)
		label := fmtNum(t)
		if l, ok := p.xTickLabels[t]; ok {
			label = l
		}
		fmt.Fprintf(&b, `<line x1="%.1f" x2="%.1f" y1="%d" y2="%d" stroke="#eee"/><text x="%.1f" y="%d" font-size="11" text-anchor="middle">%s</text>`,
			x, x, padT, padT+innerH, x, padT+innerH+14, html.EscapeString(label))
	}
	fmt.Fprintf(&b, `<text x="%d" y="%d" font-size="12" text-anchor="middle">%s</text>`, padL+innerW/2, plotH-6, html.EscapeString(p.xlabel))
	fmt.Fprintf(&b, `<text x="14" y="%d" font-size="12" text-anchor="middle" transform="rotate(-90 14 %d)">%s</text>`,
		padT+innerH/2, padT+innerH/2, html.EscapeString(p.ylabel))

	// Data.
	for i, s := range p.series {
		color := s.color
		if color == "" {
			color = palette[i%len(palette)]
		}
		switch s.kind {
		case kindLine:
			var pts []string
			for _, pt := range s.pts {
				pts = append(pts, fmt.Sprintf("%.1f,%.1f", X(pt[0]), Y(pt[1])))
			}
			fmt.Fprintf(&b, `<polyline class="series" fill="none" stroke="%s" stroke-width="1.6" points="%s"/>`, color, strings.Join(pts, " "))
		case kindPoints:
			for _, pt := range s.pts {
				fmt.Fprintf(&b, `<circle class="series" cx="%.1f" cy="%.1f" r="2.2" fill="%s" fill-opacity="0.6"/>`, X(pt[0]), Y(pt[1]), color)
			}
		case kindBars:
			for _, br := range s.bars {
				x0, x1 := X(br[0]), X(br[1])
				fmt.Fprintf(&b, `<rect class="series" x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s" fill-opacity="0.7"/>`,
					x0, Y(br[2]), math.Max(0.5, x1-x0-0.5), Y(0)-Y(br[2]), color)
			}
		}
	}
	// Legend, over a light box.
	fmt.Fprintf(&b, `<rect x="%d" y="%d" width="186" height="%d" fill="#fff" fill-opacity="0.85" stroke="#ddd"/>`,
		padL+innerW-190, padT+legendOffset-4, len(p.series)*legendLine+6)
	for i, s := range p.series {
		color := s.color
		if color == "" {
			color = palette[i%len(palette)]
		}
		ly := padT + legendOffset + i*legendLine
		fmt.Fprintf(&b, `<rect x="%d" y="%d" width="10" height="10" fill="%s"/><text x="%d" y="%d" font-size="11">%s</text>`,
			padL+innerW-180, ly, color, padL+innerW-166, ly+9, html.EscapeString(s.name))
	}
	b.WriteString(`</svg>`)
	return b.String()
}

func minMax(v []float64) (lo, hi float64) {
	lo, hi = math.Inf(1), math.Inf(-1)
	for _, x := range v {
		lo, hi = math.Min(lo, x), math.Max(hi, x)
	}
	return lo, hi
}
