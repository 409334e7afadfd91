"""Test support shared by several test modules and the benchmarks: clocks, rigs, tables.

Nothing here ships in the wheel; test modules never import each other, only this package.
"""
