# Plots one sweep written by bench/compare_policies --sweep-bandwidth / --sweep-workers / --sweep-shards /
# --sweep-staleness:
#   gnuplot -e "dat='docs/results/paper-like-sweep-bandwidth.dat'; param='bandwidth'" scripts/plot_sweep.gp
# Reads DAT and writes DAT with .png for .dat. DAT holds one block per x axis
# (bandwidth, workers and shards: one; staleness: OSP/LOSP's S, then SSP's s), each headed
# "# KEY COLUMN...": first column the swept value, then one column per policy
# (virtual seconds to the target, NaN if never reached), then "ref:LABEL" columns,
# policies the axis does not change, drawn as dashed reference lines. Several
# blocks become panels side by side on one y scale; a policy keeps its colour
# across panels.
if (!exists("dat")) dat = "docs/results/paper-like-sweep-bandwidth.dat"
if (!exists("param")) param = "bandwidth"
if (!exists("target")) target = "the target"
png = dat[1:strlen(dat)-4].".png"

header(b) = system("grep '^#' '".dat."' | sed -n ".b."p")
blocks = int(system("grep -c '^#' '".dat."'"))
nrefs(h) = sum [i=3:words(h)] (strstrt(word(h, i), "ref:") == 1 ? 1 : 0)
unref(w) = w[5:strlen(w)]
nswept(h) = words(h) - 2 - nrefs(h)
# Colours: the swept columns of every block in turn take gnuplot's default line
# types; the references (the same in each block) dark grey, red, blue, ...
first_lt(b) = 1 + (b == 1 ? 0 : sum [k=1:b-1] nswept(header(k)))
ref_colours = "#404040 #e51e10 #0072b2 #8c564b #e377c2 #7f7f7f"

set terminal pngcairo size (blocks > 1 ? 1300 : 900),540 noenhanced font ",11"
set output png
set datafile missing "NaN"
set grid
set logscale y
set key top right
set ylabel "virtual seconds to ".target." test accuracy (log)"
if (blocks > 1) {
  # One y range for every panel, so panels compare.
  range = system("awk '!/^#/ && NF { for (i = 2; i <= NF; i++) if ($i != \"NaN\") { v = $i + 0; if (!n++ || v < lo) lo = v; if (v > hi) hi = v } } END { print lo, hi }' '".dat."'")
  set yrange [real(word(range, 1)) / 1.5 : real(word(range, 2)) * 1.5]
  set multiplot layout 1, blocks title "Time to target vs ".param.(param eq "staleness" ? " bound (S for OSP and LOSP, s for SSP)" : "")
  # The same margins in every panel (keys below differ in length), so the y scales line up.
  set tmargin 3
  set bmargin 8
  set lmargin 10
  set rmargin 3
}
do for [b=1:blocks] {
  h = header(b)
  key = word(h, 2)
  ncols = words(h) - 1
  last = ncols - nrefs(h)
  lt0 = first_lt(b)
  unset logscale x
  set autoscale x
  set xtics autofreq
  set offsets 0, 0, 0, 0
  if (key eq "gbit_s") {
    set logscale x
    set xlabel "links and server NIC, Gbit/s (log)"
    set title "Time to target vs bandwidth"
  }
  if (key eq "workers") {
    set logscale x 2
    set xlabel "workers (log2)"
    set title "Time to target vs worker count"
  }
  if (key eq "shards") {
    set logscale x 2
    set xlabel "server shards, each with its own NIC (log2)"
    set title "Time to target vs server shards"
  }
  if (key eq "S") {
    set logscale x 2
    set xlabel "S: local steps a worker may leave unsent before it blocks (log2)"
    set title "OSP and LOSP"
  }
  if (key eq "s") {
    set xlabel "s: clocks the fastest worker may run ahead of the slowest"
    set title "SSP"
  }
  xt = ""
  refnote = ""
  if (key eq "S" || key eq "s") {
    # Tics at the swept values, a margin either side; the key under the plot.
    set autoscale xfix
    set offsets graph 0.05, graph 0.05, 0, 0
    set key below horizontal
    xt = ":xtic(1)"
    refnote = " (reference)"
  }
  swept = "for [i=2:last] dat index (b - 1) using 1:i".xt." with linespoints lt (lt0 + i - 2) lw 2 pt 7 title word(h, i + 1)"
  refs = "for [i=last+1:ncols] dat index (b - 1) using 1:i with lines lw 2 lc rgb word(ref_colours, i - last) dt 2 title unref(word(h, i + 1)).refnote"
  eval "plot ".swept.(last < ncols ? ", ".refs : "")
}
if (blocks > 1) unset multiplot
