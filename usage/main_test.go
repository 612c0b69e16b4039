package usage

import (
	"testing"

	"github.com/relaydev/relay/internal/testredis"
)

func TestMain(m *testing.M) { testredis.Main(m) }
