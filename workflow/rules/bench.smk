# Throughput benchmarks against the measured matmul peak (quick mode). The peers (learn2learn) need
# their own PyTorch environment, which this conda env does not hold: benchmarks/run_full.sh runs them.


rule bench:
    output:
        directory(BENCH_OUT),
    conda:
        CONDA_ENV
    log:
        f"{config['logs_dir']}/bench.log",
    threads: resource("bench", "threads")
    resources:
        mem_mb=resource("bench", "mem_mb"),
        runtime=resource("bench", "runtime"),
    shell:
        "reptile-tf bench --quick --skip peers --out {output} > {log} 2>&1"
