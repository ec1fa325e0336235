module tplharness

go 1.19
