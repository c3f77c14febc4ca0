# Plots one sweep written by bench/compare_policies --sweep-bandwidth / --sweep-workers:
#   gnuplot -e "dat='docs/results/paper-like-sweep-bandwidth.dat'; param='bandwidth'" scripts/plot_sweep.gp
# Reads DAT (first column the swept value, then one column per policy: virtual
# seconds to the target, NaN if never reached) and writes DAT with .png for .dat.
if (!exists("dat")) dat = "docs/results/paper-like-sweep-bandwidth.dat"
if (!exists("param")) param = "bandwidth"
if (!exists("target")) target = "the target"
png = dat[1:strlen(dat)-4].".png"

set terminal pngcairo size 900,540 noenhanced font ",11"
set output png
set datafile missing "NaN"
set key top right
set grid
set logscale y
set ylabel "virtual seconds to ".target." test accuracy (log)"
if (param eq "bandwidth") {
  set logscale x
  set xlabel "links and server NIC, Gbit/s (log)"
  set title "Time to target vs bandwidth"
} else {
  set logscale x 2
  set xlabel "workers (log2)"
  set title "Time to target vs worker count"
}
ncols = int(system("head -1 '".dat."' | wc -w")) - 1
plot for [i=2:ncols] dat using 1:i with linespoints lw 2 pt 7 title word(system("head -1 '".dat."'"), i + 1)
