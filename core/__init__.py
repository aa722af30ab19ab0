"""The ground: settings, the step policies, the registry contract and flow-run views.

Every other package may import this one; it imports none of them.
"""
