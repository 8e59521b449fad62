"""`socketlab proxy`: a UDP or TCP relay that loses, duplicates, reorders, delays, slices and resets.

For tests and for teaching: put it between a client and a server to see what UDP does when the network
misbehaves, and that TCP still delivers every byte in order. `faults` decides (pure, seeded); `udp` and
`tcp` move the bytes on asyncio.
"""
