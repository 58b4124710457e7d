"""The Python client: connect to a qledger server, submit workflows signed with your key, wait
for them, and read their results as Qiskit objects, their lineage, report and bundle.

Above ``rpc`` (it uses its channel and its mapping of status codes to errors), below ``cli``.
"""
