"""``offload setup``: a key, a builder and a client, set up the way the seeds do it by hand.

``key`` makes a dedicated key pair (``key``); ``builder`` renders the builder's side, a NixOS
module and a script for other hosts (``builder``); ``client`` scans and probes builders
(``probe``, through the doctor's probes) and renders the client's side: machines lines, ssh
aliases, known_hosts, nix.conf and a NixOS module (``client``). The renderers are pure text;
``values`` checks what users give before it reaches any file, ``nix_text`` quotes it for Nix,
and ``files`` prints or writes the results without ever overwriting.
"""
