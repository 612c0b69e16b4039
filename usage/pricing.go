package usage

import (
	"bytes"
	_ "embed"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"sort"
	"strings"
)

// defaultPricing is the price table shipped with the binary. Its figures are
// the vendors' list prices in USD per 1M tokens (and USD per image for image
// models) as published when the file was written, early 2026; PRICING_FILE
// overrides or extends them without a rebuild.
//
//go:embed pricing.json
var defaultPricing []byte

// Price is one model's list price. Token prices are USD per 1M tokens; image
// prices are USD per image, by size ("1024x1792") where the size has its own
// price, else Image.
type Price struct {
	Input      float64            `json:"input,omitempty"`
	Output     float64            `json:"output,omitempty"`
	CacheWrite float64            `json:"cache_write,omitempty"`
	CacheRead  float64            `json:"cache_read,omitempty"`
	Image      float64            `json:"image,omitempty"`
	ImageSizes map[string]float64 `json:"image_sizes,omitempty"`
}

// pricingFile is the format of pricing.json and of PRICING_FILE.
type pricingFile struct {
	Note   string           `json:"note,omitempty"`
	Models map[string]Price `json:"models"`
}

// rates is a Price in integer units: pico-dollars (1e-12 USD) per token, so a
// price with up to six decimals per 1M tokens is exact, and nano-dollars per
// image.
type rates struct {
	in, out, cacheWrite, cacheRead int64
	image                          int64
	imageSizes                     map[string]int64
}

// Pricing resolves model names to prices and computes what an event cost.
//
// A name is looked up case-insensitively, with a leading "models/" (as the
// Gemini API writes names) removed:
//  1. the exact name;
//  2. the name without a "-thinking" suffix (the Vertical Studio reasoning
//     variants cost what their base model costs);
//  3. the longest table name N such that the name starts with N + "-" or
//     N + "@": dated and versioned names take their family's price, e.g.
//     claude-sonnet-4-20250514 -> claude-sonnet-4, claude-3-5-haiku@20241022
//     -> claude-3-5-haiku, gemini-2.5-flash-preview-04-17 ->
//     gemini-2.5-flash-preview. Because the longest name wins,
//     claude-sonnet-4-5-20250929 takes claude-sonnet-4-5, not claude-sonnet-4.
//
// An event is priced by its client model, and if that is unknown, by its
// upstream model.
type Pricing struct {
	models map[string]rates
	names  []string // table names, longest first, for rule 3
}

// LoadPricing is the shipped table, overridden model by model by the JSON
// file at path (same format as pricing.json) when path is not empty.
func LoadPricing(path string) (*Pricing, error) {
	var override []byte
	if path != "" {
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("PRICING_FILE: %w", err)
		}
		override = b
	}
	p, err := ParsePricing(override)
	if err != nil && path != "" {
		return nil, fmt.Errorf("PRICING_FILE %s: %w", path, err)
	}
	return p, err
}

// ParsePricing is the shipped table with override (pricing.json's format,
// may be nil) applied on top: a model in override replaces the shipped entry
// of the same name, and new names are added.
func ParsePricing(override []byte) (*Pricing, error) {
	base, err := parsePricingFile(defaultPricing)
	if err != nil {
		return nil, fmt.Errorf("shipped pricing.json: %w", err)
	}
	if override != nil {
		over, err := parsePricingFile(override)
		if err != nil {
			return nil, err
		}
		for name, pr := range over {
			base[name] = pr
		}
	}
	p := &Pricing{models: make(map[string]rates, len(base))}
	for name, pr := range base {
		p.models[name] = pr
		p.names = append(p.names, name)
	}
	sort.Slice(p.names, func(i, j int) bool {
		if len(p.names[i]) != len(p.names[j]) {
			return len(p.names[i]) > len(p.names[j])
		}
		return p.names[i] < p.names[j]
	})
	return p, nil
}

func parsePricingFile(b []byte) (map[string]rates, error) {
	var f pricingFile
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("not a pricing file (want {\"models\":{\"<model>\":{\"input\":3,\"output\":15,...}}}): %w", err)
	}
	if f.Models == nil {
		return nil, fmt.Errorf(`no "models" object`)
	}
	out := make(map[string]rates, len(f.Models))
	for name, pr := range f.Models {
		key := normalizeModel(name)
		if key == "" {
			return nil, fmt.Errorf("empty model name")
		}
		r, err := pr.rates()
		if err != nil {
			return nil, fmt.Errorf("model %q: %w", name, err)
		}
		out[key] = r
	}
	return out, nil
}

func (pr Price) rates() (rates, error) {
	conv := func(what string, usd, scale float64) (int64, error) {
		if usd < 0 || math.IsNaN(usd) || math.IsInf(usd, 0) || usd > 1e6 {
			return 0, fmt.Errorf("%s: %v is not a price", what, usd)
		}
		return int64(math.Round(usd * scale)), nil
	}
	var r rates
	var err error
	// USD per 1M tokens -> pico-USD per token: * 1e12 / 1e6.
	for _, f := range []struct {
		what string
		usd  float64
		dst  *int64
	}{{"input", pr.Input, &r.in}, {"output", pr.Output, &r.out}, {"cache_write", pr.CacheWrite, &r.cacheWrite},
		{"cache_read", pr.CacheRead, &r.cacheRead}} {
		if *f.dst, err = conv(f.what, f.usd, 1e6); err != nil {
			return rates{}, err
		}
	}
	if r.image, err = conv("image", pr.Image, NanosPerUSD); err != nil {
		return rates{}, err
	}
	if len(pr.ImageSizes) > 0 {
		r.imageSizes = make(map[string]int64, len(pr.ImageSizes))
		for size, usd := range pr.ImageSizes {
			if r.imageSizes[strings.ToLower(size)], err = conv("image_sizes."+size, usd, NanosPerUSD); err != nil {
				return rates{}, err
			}
		}
	}
	return r, nil
}

func normalizeModel(name string) string {
	name = strings.ToLower(strings.TrimSpace(name))
	return strings.TrimPrefix(name, "models/")
}

// Resolve is the table name that prices model, by the rules on Pricing.
func (p *Pricing) Resolve(model string) (string, bool) {
	name := normalizeModel(model)
	if name == "" {
		return "", false
	}
	if _, ok := p.models[name]; ok {
		return name, true
	}
	if base, ok := strings.CutSuffix(name, "-thinking"); ok {
		if _, ok := p.models[base]; ok {
			return base, true
		}
		name = base
	}
	for _, n := range p.names {
		if len(name) > len(n) && strings.HasPrefix(name, n) && (name[len(n)] == '-' || name[len(n)] == '@') {
			return n, true
		}
	}
	return "", false
}

// Cost is what ev cost in nano-dollars, and whether a price was found. An
// event without any model name (e.g. rejected before its body was read) costs
// nothing and counts as priced.
func (p *Pricing) Cost(ev *Event) (nanos int64, priced bool) {
	if ev.Model == "" && ev.UpstreamModel == "" {
		return 0, true
	}
	name, ok := p.Resolve(ev.Model)
	if !ok {
		if name, ok = p.Resolve(ev.UpstreamModel); !ok {
			return 0, false
		}
	}
	r := p.models[name]
	pico := ev.InputTokens*r.in + ev.OutputTokens*r.out + ev.CacheCreateTokens*r.cacheWrite + ev.CacheReadTokens*r.cacheRead
	nanos = (pico + 500) / 1000
	if ev.Images > 0 {
		per := r.image
		if v, ok := r.imageSizes[strings.ToLower(ev.ImageSize)]; ok {
			per = v
		}
		nanos += int64(ev.Images) * per
	}
	return nanos, true
}
