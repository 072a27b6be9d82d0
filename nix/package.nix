# offload packaged the nixpkgs way. Called by ../default.nix and ../flake.nix; not built in CI
# (there is no nixpkgs on the CI machine): tests/integration/test_packaging_nix.py parses it and
# evaluates it against a stub buildPythonApplication to check it agrees with pyproject.toml.
{
  lib,
  python3Packages,
  nix,
  openssh,
}:

python3Packages.buildPythonApplication {
  pname = "offload";
  version = "0.1.0";
  pyproject = true;

  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [
      ../pyproject.toml
      ../setup.py
      ../README.md
      ../src
      ../bin
    ];
  };

  # setup.py compiles the scheduler's policy, graph and simulator with mypyc: the same
  # decisions, planned 1.5-1.8x faster (docs/BENCHMARKS.md, "Session 21").
  build-system = with python3Packages; [
    setuptools
    mypy
  ];
  env.OFFLOAD_USE_MYPYC = "1";

  dependencies = with python3Packages; [
    rich
    typing-extensions
  ];

  # offload runs nix-store, nix-instantiate and ssh. The system's own come first (the daemon's
  # Nix is the one whose store and settings matter); these are only the fallback.
  makeWrapperArgs = [
    "--suffix"
    "PATH"
    ":"
    (lib.makeBinPath [
      nix
      openssh
    ])
  ];

  # The test suite needs root and mount namespaces for its local sshd fleet: not in a sandbox.
  doCheck = false;
  pythonImportsCheck = [
    "offload"
    "offload.scheduler.policy.core"
  ];

  meta = {
    description = "Distribute Nix builds over the local machine and SSH builders, scheduling the whole graph";
    license = lib.licenses.mit;
    mainProgram = "offload";
    platforms = lib.platforms.unix;
  };
}
