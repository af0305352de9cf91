"""The parity harness: does a layout compute what one device computes, and its report."""
