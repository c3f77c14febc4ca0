# Plots one scenario's results written by bench/compare_policies:
#   gnuplot -e "dir='docs/results'; scen='paper-like'" scripts/plot.gp
# (compare.sh adds xunit/accunit/clock for virtual-time runs.)
# Reads DIR/SCEN-series.dat (one block per policy: test accuracy vs seconds) and
# DIR/SCEN-time.dat (share of wall time per policy); writes DIR/SCEN-accuracy.png
# and DIR/SCEN-time.png.
if (!exists("dir")) dir = "docs/results"
if (!exists("scen")) scen = "paper-like"
# compare.sh sets these for virtual-time runs (bench/compare_policies --time virtual).
if (!exists("xunit")) xunit = "wall-clock seconds since start"
if (!exists("accunit")) accunit = "test accuracy (Fashion-MNIST, 10k)"
if (!exists("clock")) clock = "wall-clock time"
series = dir."/".scen."-series.dat"
times = dir."/".scen."-time.dat"

set terminal pngcairo size 900,540 noenhanced font ",11"
set datafile missing "null"

# --- test accuracy vs wall clock, one line per policy
set output dir."/".scen."-accuracy.png"
set title "Test accuracy vs ".clock." (".scen.")"
set xlabel xunit
set ylabel accunit
set key bottom right
set grid
stats series using 2 nooutput
nblocks = STATS_blocks
if (exists("target")) set arrow from graph 0, first target to graph 1, first target nohead dt 2 lc rgb "gray"
plot for [i=0:nblocks-1] series index i using 2:1 with lines lw 2 title columnheader(1)

# --- share of wall time, stacked
reset
set terminal pngcairo size 1000,560 noenhanced font ",10"
set output dir."/".scen."-time.png"
set title "Where each worker's wall time went (mean over workers, ".scen.")"
set ylabel "% of wall time"
set yrange [0:105]
set style data histograms
set style histogram rowstacked
set style fill solid 0.85 border -1
set boxwidth 0.7
set key outside right top vertical
set grid ytics
set xtics font ",9"
set bmargin 5
plot times using 2:xtic(1) title "compute" lc rgb "#4daf4a", \
     '' using 3 title "blocked: network" lc rgb "#e41a1c", \
     '' using 4 title "blocked: held by policy" lc rgb "#ff7f00", \
     '' using 5 title "other (scheduling, install)" lc rgb "#bbbbbb"
