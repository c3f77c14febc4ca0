# Plots the update-compression sweep written by bench/compare_policies --sweep-codec:
#   gnuplot -e "dat='docs/results/paper-like-sweep-codec.dat'; target='0.85'" scripts/plot_codec.gp
# Reads DAT (a header row "codec bytes_per_round POLICY...", then one row per codec)
# and writes DAT with .png for .dat: for each codec, one bar per policy, the virtual
# seconds to the target (log scale; a missing bar was not reached), the codec's upload
# per round under its name. Hiding communication (OSP) and shrinking it (a codec) side
# by side, and both together.
if (!exists("dat")) dat = "docs/results/paper-like-sweep-codec.dat"
if (!exists("target")) target = "the target"
png = dat[1:strlen(dat)-4].".png"

# Bytes as the tick label shows them.
human(b) = b >= 1e6 ? sprintf("%.1f MB", b / 1e6) : (b >= 1e3 ? sprintf("%.0f kB", b / 1e3) : sprintf("%.0f B", b))
npolicies = int(system("head -1 '".dat."' | wc -w")) - 2

set terminal pngcairo size 900,540 noenhanced font ",11"
set output png
set datafile missing "NaN"
set key autotitle columnhead top right
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set grid ytics
set logscale y
set yrange [0.5:*]
set ylabel "virtual seconds to ".target." test accuracy (log)"
set bmargin 6
set xlabel "codec (upload per round, all workers)" offset 0,-1
set title "Hiding communication (OSP) vs shrinking it (update compression)"
plot for [i=3:2+npolicies] dat using i:xtic(sprintf("%s\n%s", strcol(1), human(column(2))))
