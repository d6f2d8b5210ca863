"""The pieces of benchmarks/speed.py, one measurement or shared piece per module (the entry point, its command line
and its JSON stay in benchmarks/speed.py):

* ``common``    sizes, batch, workloads: plain constants;
* ``clock``     wall/CPU timing, the interleaved A/B runner, thread-count context;
* ``peak``      the dense matmul peak;
* ``reference`` the LEBM paper's listing (Pang et al. 2020, appendix D), literally;
* ``sizes``     one size: ebmtool's captured ``step`` closures, the reference on copies, the FLOP counts;
* ``variants``  channels_last / threads / bf16 variants of the hot loop and its share of the peak;
* ``report``    environment, per-cell plan and the markdown tables of docs/performance.md.

The modules import ``ebmtool``: benchmarks/speed.py puts the repository root on ``sys.path`` first.
"""
