"""`trainer eval`: a trained run or an exported bundle on a dataset split, as a report folder.

Import the module you need; this package imports nothing.
"""
