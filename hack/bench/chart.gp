# Chart of hack/bench/run.sh's ratios: bars = median, whiskers = min-max, dots = the target.
# gnuplot -e "datafile='chart.dat'; outfile='benchmarks.png'; subtitle='...'" chart.gp
set terminal pngcairo size 1100,520 font ",10" noenhanced
set output outfile
set title "Orca benchmark ratios (".subtitle.") - bars: median, whiskers: min-max, red: target"
set style fill solid 0.6 border -1
set boxwidth 0.6
set logscale y 2
set yrange [0.05:16]
set ytics (0.0625, 0.125, 0.25, 0.5, 1, 2, 4, 8, 16)
set grid ytics
set xtics rotate by -35 left
set key off
set bmargin 7
plot datafile using 0:2:xtic(1) with boxes lc rgb "#4a7ab5", \
     '' using 0:2:3:4 with yerrorbars lc rgb "black" pt -1, \
     '' using 0:5 with points pt 7 ps 1.4 lc rgb "#cc2222"
